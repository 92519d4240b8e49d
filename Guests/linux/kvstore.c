/* kvstore.c - the Linux guest's network service: a TCP key-value store that
 * journals every change to a disk and answers only once the change is durable.
 * Built static by Scripts/linux-guest.sh and run by the guest's /init.
 *
 * Usage: kvstore DEVICE [PORT]   (default port 7000)
 * Protocol: one command per line (\n or \r\n), one reply line each:
 *   SET k v   -> OK <record>          GET k  -> VALUE v | NOT_FOUND
 *   INCR k    -> VALUE n <record>     PING   -> PONG
 *   SIZE      -> VALUE <records in the journal>
 *   anything else -> ERROR <why>
 * Keys are at most 64 bytes, values at most 400. A SET or INCR is written to
 * DEVICE and fsync'd before its reply is sent: a reply names a record that is
 * on the disk.
 *
 * Journal: record n (1, 2, ...) in sector n-1 of DEVICE:
 *   u32 magic 0x4B56534A ("JSVK" little endian), u64 n, u16 key length,
 *   u16 value length, key, value, zeros, u32 CRC-32 of bytes 0..507 at 508.
 * At start the journal is replayed from sector 0 up to the first sector that
 * is not record n+1; "kvstore: replayed <n> records" goes to the console.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAGIC 0x4B56534Au
#define SECTOR 512
#define MAX_KEY 64
#define MAX_VALUE 400
#define MAX_KEYS 4096
#define MAX_CLIENTS 64
#define LINE 1024

struct entry { char key[MAX_KEY + 1]; char value[MAX_VALUE + 1]; int used; };
static struct entry table[MAX_KEYS];
static uint64_t records;
static int disk;

static uint32_t crc32(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    }
    return ~c;
}

static struct entry *find(const char *key, int create) {
    uint32_t h = crc32((const uint8_t *)key, strlen(key)) % MAX_KEYS;
    for (int i = 0; i < MAX_KEYS; i++) {
        struct entry *e = &table[(h + i) % MAX_KEYS];
        if (e->used && strcmp(e->key, key) == 0) return e;
        if (!e->used) {
            if (!create) return NULL;
            e->used = 1;
            strcpy(e->key, key);
            e->value[0] = 0;
            return e;
        }
    }
    return NULL;
}

static void encode(uint8_t *s, uint64_t n, const char *key, const char *value) {
    uint32_t magic = MAGIC;
    uint16_t kl = (uint16_t)strlen(key), vl = (uint16_t)strlen(value);
    memset(s, 0, SECTOR);
    memcpy(s, &magic, 4);
    memcpy(s + 4, &n, 8);
    memcpy(s + 12, &kl, 2);
    memcpy(s + 14, &vl, 2);
    memcpy(s + 16, key, kl);
    memcpy(s + 16 + kl, value, vl);
    uint32_t crc = crc32(s, 508);
    memcpy(s + 508, &crc, 4);
}

/* Whether sector s is record n; if so, applies it. */
static int replay_one(const uint8_t *s, uint64_t n) {
    uint32_t magic, crc;
    uint64_t m;
    uint16_t kl, vl;
    memcpy(&magic, s, 4); memcpy(&m, s + 4, 8); memcpy(&kl, s + 12, 2); memcpy(&vl, s + 14, 2); memcpy(&crc, s + 508, 4);
    if (magic != MAGIC || m != n || kl == 0 || kl > MAX_KEY || vl > MAX_VALUE || 16 + kl + vl > 508) return 0;
    if (crc32(s, 508) != crc) return 0;
    char key[MAX_KEY + 1], value[MAX_VALUE + 1];
    memcpy(key, s + 16, kl); key[kl] = 0;
    memcpy(value, s + 16 + kl, vl); value[vl] = 0;
    struct entry *e = find(key, 1);
    if (e) strcpy(e->value, value);
    return 1;
}

/* Appends a record and makes it durable; 0 on success. */
static int journal(const char *key, const char *value) {
    static uint8_t sector[SECTOR] __attribute__((aligned(4096)));
    encode(sector, records + 1, key, value);
    if (pwrite(disk, sector, SECTOR, (off_t)records * SECTOR) != SECTOR) return -1;
    if (fdatasync(disk) != 0) return -1;
    records++;
    return 0;
}

static void reply(int fd, const char *text) {
    size_t n = strlen(text), done = 0;
    while (done < n) {
        ssize_t w = write(fd, text + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        done += (size_t)w;
    }
}

static void command(int fd, char *line) {
    char out[LINE];
    char *cmd = strtok(line, " "), *key = strtok(NULL, " "), *value = strtok(NULL, "");
    if (!cmd) { reply(fd, "ERROR empty\n"); return; }
    if (strcmp(cmd, "PING") == 0) { reply(fd, "PONG\n"); return; }
    if (strcmp(cmd, "SIZE") == 0) { snprintf(out, sizeof out, "VALUE %llu\n", (unsigned long long)records); reply(fd, out); return; }
    if (!key || strlen(key) > MAX_KEY) { reply(fd, "ERROR bad key\n"); return; }
    if (strcmp(cmd, "GET") == 0) {
        struct entry *e = find(key, 0);
        if (e) { snprintf(out, sizeof out, "VALUE %s\n", e->value); reply(fd, out); } else reply(fd, "NOT_FOUND\n");
        return;
    }
    char next[MAX_VALUE + 1];
    if (strcmp(cmd, "SET") == 0) {
        if (!value || strlen(value) > MAX_VALUE) { reply(fd, "ERROR bad value\n"); return; }
        snprintf(next, sizeof next, "%s", value);
    } else if (strcmp(cmd, "INCR") == 0) {
        struct entry *e = find(key, 0);
        snprintf(next, sizeof next, "%lld", (e ? atoll(e->value) : 0) + 1);
    } else {
        reply(fd, "ERROR unknown command\n");
        return;
    }
    struct entry *e = find(key, 1);
    if (!e) { reply(fd, "ERROR store full\n"); return; }
    if (journal(key, next) != 0) { snprintf(out, sizeof out, "ERROR disk: %s\n", strerror(errno)); reply(fd, out); return; }
    strcpy(e->value, next);
    if (strcmp(cmd, "SET") == 0) snprintf(out, sizeof out, "OK %llu\n", (unsigned long long)records);
    else snprintf(out, sizeof out, "VALUE %s %llu\n", next, (unsigned long long)records);
    reply(fd, out);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: kvstore DEVICE [PORT]\n"); return 2; }
    disk = open(argv[1], O_RDWR);
    if (disk < 0) { printf("kvstore: open %s: %s\n", argv[1], strerror(errno)); return 1; }
    static uint8_t sector[SECTOR];
    while (pread(disk, sector, SECTOR, (off_t)records * SECTOR) == SECTOR && replay_one(sector, records + 1)) records++;
    printf("kvstore: replayed %llu records\n", (unsigned long long)records);
    fflush(stdout);

    int port = argc > 2 ? atoi(argv[2]) : 7000;
    int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 16) != 0) {
        printf("kvstore: listen on %d: %s\n", port, strerror(errno));
        return 1;
    }
    printf("kvstore: listening on %d\n", port);
    fflush(stdout);

    struct pollfd fds[MAX_CLIENTS + 1];
    static char buffers[MAX_CLIENTS + 1][LINE];
    size_t filled[MAX_CLIENTS + 1] = {0};
    int count = 1;
    fds[0] = (struct pollfd){ .fd = listener, .events = POLLIN };
    for (;;) {
        if (poll(fds, (nfds_t)count, -1) < 0) { if (errno == EINTR) continue; return 1; }
        if (fds[0].revents & POLLIN) {
            int client = accept(listener, NULL, NULL);
            if (client >= 0 && count <= MAX_CLIENTS) {
                setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                fds[count] = (struct pollfd){ .fd = client, .events = POLLIN };
                filled[count] = 0;
                count++;
            } else if (client >= 0) {
                close(client);
            }
        }
        for (int i = 1; i < count; i++) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t n = read(fds[i].fd, buffers[i] + filled[i], LINE - 1 - filled[i]);
            if (n <= 0) {
                close(fds[i].fd);
                fds[i] = fds[count - 1];
                filled[i] = filled[count - 1];
                memcpy(buffers[i], buffers[count - 1], filled[i]);
                count--;
                i--;
                continue;
            }
            filled[i] += (size_t)n;
            char *start = buffers[i], *newline;
            while ((newline = memchr(start, '\n', filled[i] - (size_t)(start - buffers[i]))) != NULL) {
                *newline = 0;
                if (newline > start && newline[-1] == '\r') newline[-1] = 0;
                command(fds[i].fd, start);
                start = newline + 1;
            }
            filled[i] -= (size_t)(start - buffers[i]);
            memmove(buffers[i], start, filled[i]);
            if (filled[i] == LINE - 1) { reply(fds[i].fd, "ERROR line too long\n"); filled[i] = 0; }
        }
    }
}
