/* journal.c - an append-only disk journal guest for MicroVM.
 *
 * Record n (n = 1, 2, 3, ...) lives in sector n-1 of the virtio-blk disk:
 *   offset 0    u32 magic 0x4A524E4C ("LNRJ" little endian)
 *   offset 4    u64 record number n
 *   offset 12   u32 payload length L = 16 + (n * 37) % 473   (16..488)
 *   offset 16   L payload bytes: byte i = (splitmix64(n * 0x100000001b3 + i / 8) >> (8 * (i % 8)))
 *   then zeros up to offset 508
 *   offset 508  u32 CRC-32 (IEEE) of bytes 0..507
 * At start the disk is scanned from sector 0; the scan stops at the first
 * sector that is not the valid next record, and "journal: found <n> records"
 * is printed. Then records n+1, n+2, ... are appended, one write each; every
 * flush_every=K records (default 8) a FLUSH is issued and, once it completed,
 * "flushed <highest record>" goes to the console and to every TCP client
 * connected to port 7001 (when ip= is given and a virtio-net card exists).
 * count=N stops after N records appended in this run (exit code 0); a full
 * disk prints "journal: disk full at <n>" and the guest then idles forever.
 */
#include "../runtime/runtime.h"
#include "../drivers/virtio.h"
#include "../lwip-port/net.h"
#include "lwip/tcp.h"

#define MAGIC 0x4A524E4Cu
#define SECTOR 512
#define SCAN_BATCH 128                  /* sectors per read while scanning */
#define MAX_CLIENTS 64

static struct vblk disk;
static int networked;
static struct tcp_pcb *clients[MAX_CLIENTS];

static uint64_t splitmix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint32_t payload_length(uint64_t n) { return 16 + (uint32_t)((n * 37) % 473); }

static void make_record(uint64_t n, uint8_t *sector) {
    memset(sector, 0, SECTOR);
    uint32_t magic = MAGIC, len = payload_length(n);
    memcpy(sector, &magic, 4);
    memcpy(sector + 4, &n, 8);
    memcpy(sector + 12, &len, 4);
    for (uint32_t i = 0; i < len; i += 8) {
        uint64_t v = splitmix(n * 0x100000001b3ULL + i / 8);
        for (uint32_t k = 0; k < 8 && i + k < len; k++) sector[16 + i + k] = (uint8_t)(v >> (8 * k));
    }
    uint32_t crc = crc32(0, sector, 508);
    memcpy(sector + 508, &crc, 4);
}

/* Whether `sector` holds exactly record n. */
static int is_record(const uint8_t *sector, uint64_t n) {
    static uint8_t expected[SECTOR];
    make_record(n, expected);
    return memcmp(sector, expected, SECTOR) == 0;
}

/* ---- TCP clients on port 7001: they only listen for "flushed <n>" lines ---- */

static void drop_client(struct tcp_pcb *pcb) {
    for (int i = 0; i < MAX_CLIENTS; i++) if (clients[i] == pcb) clients[i] = NULL;
}

static err_t on_recv(void *arg, struct tcp_pcb *pcb, struct pbuf *p, err_t err) {
    (void)arg;
    if (!p || err != ERR_OK) {
        if (p) pbuf_free(p);
        drop_client(pcb);
        tcp_arg(pcb, NULL);
        tcp_recv(pcb, NULL);
        tcp_err(pcb, NULL);
        if (tcp_close(pcb) != ERR_OK) { tcp_abort(pcb); return ERR_ABRT; }
        return ERR_OK;
    }
    tcp_recved(pcb, p->tot_len);        /* input is ignored */
    pbuf_free(p);
    return ERR_OK;
}

static void on_error(void *arg, err_t err) {
    (void)err;
    drop_client(arg);                   /* the pcb (our arg) is already freed */
}

static err_t on_accept(void *arg, struct tcp_pcb *pcb, err_t err) {
    (void)arg;
    if (err != ERR_OK || !pcb) return ERR_VAL;
    for (int i = 0; i < MAX_CLIENTS; i++) {
        if (!clients[i]) {
            clients[i] = pcb;
            tcp_arg(pcb, pcb);
            tcp_recv(pcb, on_recv);
            tcp_err(pcb, on_error);
            tcp_nagle_disable(pcb);
            return ERR_OK;
        }
    }
    tcp_abort(pcb);
    return ERR_ABRT;
}

static void report_flushed(uint64_t n) {
    char line[64];
    int len = snprintf(line, sizeof line, "flushed %llu\n", (unsigned long long)n);
    console_write(line);
    if (!networked) return;
    for (int i = 0; i < MAX_CLIENTS; i++) {
        struct tcp_pcb *pcb = clients[i];
        if (!pcb) continue;
        if (tcp_sndbuf(pcb) < (u32_t)len || tcp_write(pcb, line, (u16_t)len, TCP_WRITE_FLAG_COPY) != ERR_OK) {
            /* a client that does not read its reports is cut off */
            clients[i] = NULL;
            tcp_arg(pcb, NULL);
            tcp_err(pcb, NULL);
            tcp_recv(pcb, NULL);
            tcp_abort(pcb);
            continue;
        }
        tcp_output(pcb);
    }
}

static void flush_and_report(uint64_t highest) {
    int status = vblk_flush(&disk);
    if (status) panic("journal: flush failed (status %d)", status);
    report_flushed(highest);
}

int main(void) {
    uint64_t base = find_device(DEVICE_TYPE_VIRTIO_BLK);
    if (!base || vblk_init(&disk, base)) {
        printf("journal: no virtio-blk disk\n");
        return 1;
    }
    uint64_t flush_every = option_u64("flush_every", 8), count = option_u64("count", 0);
    if (flush_every == 0) flush_every = 1;

    /* scan */
    uint8_t *batch = malloc(SCAN_BATCH * SECTOR);
    uint64_t found = 0;
    for (uint64_t sector = 0; sector < disk.sectors; sector += SCAN_BATCH) {
        uint32_t n = disk.sectors - sector < SCAN_BATCH ? (uint32_t)(disk.sectors - sector) : SCAN_BATCH;
        if (vblk_read(&disk, sector, batch, n)) panic("journal: read of sector %llu failed", (unsigned long long)sector);
        uint32_t i = 0;
        while (i < n && is_record(batch + (size_t)i * SECTOR, found + 1)) { found++; i++; }
        if (i < n) break;
    }
    printf("journal: found %llu records\n", (unsigned long long)found);

    networked = net_setup() == 0;
    if (networked) {
        struct tcp_pcb *listener = tcp_new();
        if (!listener || tcp_bind(listener, IP4_ADDR_ANY, 7001) != ERR_OK || !(listener = tcp_listen(listener)))
            panic("journal: cannot listen on port 7001");
        tcp_accept(listener, on_accept);
        printf("journal: reporting on %s:7001\n", net_address());
    }

    uint8_t *record = batch;
    uint64_t written = 0, highest = found, unflushed = 0;
    for (;;) {
        if (count && written == count) break;
        if (highest >= disk.sectors) {
            if (unflushed) flush_and_report(highest);
            printf("journal: disk full at %llu\n", (unsigned long long)highest);
            for (;;) {
                if (networked) { if (net_poll(64) == 0) net_idle(10000); }
                else doorbell_wait_ns(1000000000ULL);
            }
        }
        make_record(highest + 1, record);
        int status = vblk_write(&disk, highest, record, 1);
        if (status) panic("journal: write of record %llu failed (status %d)", (unsigned long long)highest + 1, status);
        highest++;
        written++;
        if (++unflushed == flush_every) {
            flush_and_report(highest);
            unflushed = 0;
        }
        if (networked) net_poll(64);
    }
    if (unflushed) flush_and_report(highest);
    if (networked) {
        /* let the last reports leave before exiting */
        uint64_t until = now_us() + 200000;
        while (now_us() < until) { if (net_poll(64) == 0) net_idle(10000); }
    }
    printf("journal: wrote %llu records, highest %llu\n", (unsigned long long)written, (unsigned long long)highest);
    return 0;
}
