/* The built-in workload guest.
 *
 * Runs on every vCPU. Each iteration it updates `pages` random 64-bit words in
 * its own working set of `wss` pages (each new value derived from a running
 * hash and the word's old value, so memory matters), and every `every`
 * iterations prints one line:
 *
 *     seq=<n> hash=<16 hex digits> cpu=<vcpu index>
 *
 * With count=<c> it stops (doorbell exit code 0) once every vCPU printed c lines.
 * Options come from the boot-info command line, e.g. "pages=64 wss=1024 every=100".
 * Deterministic: Tests/MicroVMTests/WorkloadReference.swift computes the same lines.
 */
#include "../include/understudy_guest.h"

static uint64_t mix(uint64_t x) {
    x ^= x >> 31;
    x *= 0x7fb5d329728ea185ULL;
    x ^= x >> 27;
    x *= 0x81dadef4bc2dd44dULL;
    x ^= x >> 33;
    return x;
}

static uint64_t option(const char *cmdline, const char *key, uint64_t fallback) {
    for (const char *p = cmdline; *p; p++) {
        if (p != cmdline && p[-1] != ' ') continue;
        const char *k = key, *q = p;
        while (*k && *q == *k) { k++; q++; }
        if (*k || *q != '=') continue;
        q++;
        uint64_t value = 0;
        int digits = 0;
        while (*q >= '0' && *q <= '9') { value = value * 10 + (uint64_t)(*q - '0'); q++; digits++; }
        return digits ? value : fallback;
    }
    return fallback;
}

static char *put_text(char *out, const char *text) {
    while (*text) *out++ = *text++;
    return out;
}

static char *put_decimal(char *out, uint64_t value) {
    char digits[20];
    int n = 0;
    do { digits[n++] = (char)('0' + value % 10); value /= 10; } while (value);
    while (n) *out++ = digits[--n];
    return out;
}

static char *put_hex(char *out, uint64_t value) {
    for (int shift = 60; shift >= 0; shift -= 4) *out++ = "0123456789abcdef"[(value >> shift) & 15];
    return out;
}

static void say(const struct boot_info *info, char *line) {
    mmio_write64(info->doorbell_base + DOORBELL_PUTS, (uint64_t)line);
}

static volatile uint64_t finished_vcpus;

__attribute__((noreturn)) static void finish(const struct boot_info *info, uint64_t code) {
    __atomic_add_fetch(&finished_vcpus, 1, __ATOMIC_SEQ_CST);
    if (code != 0) mmio_write64(info->doorbell_base + DOORBELL_EXIT, code);
    while (__atomic_load_n(&finished_vcpus, __ATOMIC_SEQ_CST) < info->vcpu_count)
        mmio_write64(info->doorbell_base + DOORBELL_WAIT_NS, 1000000);
    mmio_write64(info->doorbell_base + DOORBELL_EXIT, 0);
    for (;;) mmio_write64(info->doorbell_base + DOORBELL_WAIT_NS, 0);
}

__attribute__((noreturn, section(".text.entry")))
void _start(const struct boot_info *info, uint64_t vcpu) {
    char line[96];
    if (info->magic != BOOT_INFO_MAGIC) finish(info, 3);
    uint64_t pages = option(info->cmdline, "pages", 16);
    uint64_t wss = option(info->cmdline, "wss", 256);
    uint64_t every = option(info->cmdline, "every", 1000);
    uint64_t count = option(info->cmdline, "count", 0);
    if (wss == 0 || every == 0) finish(info, 2);

    uint64_t base = (info->free_memory_base + 0x1fffff) & ~0x1fffffULL;
    uint64_t region = base + vcpu * wss * 4096;
    if (region + wss * 4096 > info->memory_size) {
        char *p = put_text(line, "workload: working set does not fit in memory\n");
        *p = 0;
        say(info, line);
        finish(info, 2);
    }

    uint64_t hash = mix(0x5eed000000000000ULL + vcpu);
    uint64_t seq = 0;
    for (uint64_t iteration = 0;; iteration++) {
        for (uint64_t i = 0; i < pages; i++) {
            hash = mix(hash + iteration);
            uint64_t page = hash % wss;
            uint64_t word = (hash >> 40) & 511;
            volatile uint64_t *slot = (volatile uint64_t *)(region + page * 4096 + word * 8);
            hash = mix(hash ^ *slot);
            *slot = hash;
        }
        if ((iteration + 1) % every == 0) {
            seq++;
            char *p = put_text(line, "seq=");
            p = put_decimal(p, seq);
            p = put_text(p, " hash=");
            p = put_hex(p, hash);
            p = put_text(p, " cpu=");
            p = put_decimal(p, vcpu);
            *p++ = '\n';
            *p = 0;
            say(info, line);
            if (count && seq >= count) finish(info, 0);
        }
    }
}
