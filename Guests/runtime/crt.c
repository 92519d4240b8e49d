/* crt.c - guest entry point, boot-info access, command-line options, time and doorbell.
 *
 * MicroVM enters every vCPU at _start with rdi = boot-info page, rsi = vCPU
 * index, rsp = a 64 KiB stack (Docs/GuestModel.md). vCPU 0 runs main(); the
 * others sleep forever (the apps are single-threaded, no locks needed).
 */
#include "runtime.h"

const struct boot_info *boot;
int main(void);
void malloc_init(uint64_t base, uint64_t end);

__asm__(".section .text.entry,\"ax\"\n"
        ".globl _start\n"
        "_start:\n"
        "  and $-16, %rsp\n"
        "  call runtime_start\n"
        "  ud2\n"
        ".previous\n");

__attribute__((noreturn, used)) void runtime_start(const struct boot_info *info, uint64_t vcpu) {
    boot = info;
    if (vcpu != 0) wait_forever();
    malloc_init(info->free_memory_base, info->memory_size);
    guest_exit((uint64_t)main());
}

void doorbell_wait_ns(uint64_t ns) { mmio_write64(boot->doorbell_base + DOORBELL_WAIT_NS, ns ? ns : 1); }
uint64_t doorbell_events(void) { return mmio_read64(boot->doorbell_base + DOORBELL_EVENTS); }

void guest_exit(uint64_t code) {
    mmio_write64(boot->doorbell_base + DOORBELL_EXIT, code);
    wait_forever();
}

void wait_forever(void) {
    for (;;) mmio_write64(boot->doorbell_base + DOORBELL_WAIT_NS, 1000000000ULL);
}

/* Microseconds since the TSC started, without overflowing the multiplication. */
uint64_t now_us(void) {
    uint64_t tsc = rdtsc(), khz = boot->tsc_khz ? boot->tsc_khz : 1000000;
    return tsc / khz * 1000 + tsc % khz * 1000 / khz;
}

uint32_t now_ms(void) {
    uint64_t khz = boot->tsc_khz ? boot->tsc_khz : 1000000;
    return (uint32_t)(rdtsc() / khz);
}

uint64_t find_device(uint32_t type) {
    uint64_t count = boot->device_count < 16 ? boot->device_count : 16;
    for (uint64_t i = 0; i < count; i++)
        if (boot->devices[i].type == type) return boot->devices[i].base;
    return 0;
}

/* Finds "key=" at the start of a word; returns the value's start or NULL. */
static const char *option_find(const char *key) {
    const char *line = boot->cmdline;
    size_t n = strlen(key);
    for (const char *p = line; *p; p++) {
        if (p != line && p[-1] != ' ') continue;
        if (strncmp(p, key, n) == 0 && p[n] == '=') return p + n + 1;
    }
    return NULL;
}

int option_str(const char *key, char *out, size_t size) {
    const char *v = option_find(key);
    if (!v || size == 0) return 0;
    size_t i = 0;
    while (v[i] && v[i] != ' ' && i + 1 < size) { out[i] = v[i]; i++; }
    out[i] = 0;
    return 1;
}

uint64_t option_u64(const char *key, uint64_t fallback) {
    const char *v = option_find(key);
    if (!v || *v < '0' || *v > '9') return fallback;
    uint64_t value = 0;
    while (*v >= '0' && *v <= '9') value = value * 10 + (uint64_t)(*v++ - '0');
    return value;
}

int parse_ipv4(const char *text, uint32_t *out) {
    uint32_t parts[4];
    for (int i = 0; i < 4; i++) {
        if (*text < '0' || *text > '9') return 0;
        uint32_t v = 0;
        while (*text >= '0' && *text <= '9') { v = v * 10 + (uint32_t)(*text++ - '0'); if (v > 255) return 0; }
        parts[i] = v;
        if (i < 3 && *text++ != '.') return 0;
    }
    if (*text && *text != ' ') return 0;
    /* network byte order in memory: first octet at the lowest address */
    *out = parts[0] | parts[1] << 8 | parts[2] << 16 | parts[3] << 24;
    return 1;
}
