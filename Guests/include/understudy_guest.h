/* The guest ABI of MicroVM (see Docs/GuestModel.md).
 *
 * A guest starts in 64-bit mode at CPL3 with paging on (identity map of the
 * first 4 GiB), SSE enabled, and:
 *   rdi = address of the boot-info page
 *   rsi = this vCPU's index (0 .. vcpu_count-1)
 *   rsp = top of this vCPU's own 64 KiB stack
 * Devices are reached through MMIO only (port I/O, SYSCALL and INT fault at CPL3).
 */
#ifndef UNDERSTUDY_GUEST_H
#define UNDERSTUDY_GUEST_H

#include <stdint.h>

#define BOOT_INFO_MAGIC 0x4f464e4954554255ULL /* "UBTINFO" little endian + 'O' */
#define BOOT_INFO_VERSION 1

struct boot_info {
    uint64_t magic;
    uint32_t version;
    uint32_t vcpu_count;
    uint64_t memory_size;     /* bytes of guest RAM from guest-physical 0 */
    uint64_t tsc_khz;         /* TSC frequency; rdtsc works at CPL3 */
    uint64_t serial_base;     /* 8250-compatible UART, one byte per register */
    uint64_t doorbell_base;   /* paravirtual doorbell, see below */
    uint64_t free_memory_base;/* first byte of RAM not used by the image, stacks or tables */
    uint32_t cmdline_length;
    uint32_t reserved;
    uint64_t device_count;    /* further devices: {type, base, size, irq} records */
    struct { uint32_t type, irq; uint64_t base, size; } devices[16];
    char cmdline[2048];       /* NUL-terminated */
};

/* Types of boot_info.devices[] records (the virtio device IDs). Each is a
 * virtio-mmio (modern, version 2) device of `size` bytes at `base`. */
#define DEVICE_TYPE_VIRTIO_NET 1
#define DEVICE_TYPE_VIRTIO_BLK 2

/* 8250 registers (offsets from serial_base). */
#define UART_THR 0
#define UART_LSR 5
#define UART_LSR_THRE 0x20
#define UART_LSR_DR 0x01

/* Doorbell registers (offsets from doorbell_base), 64-bit accesses.
 *   WAIT_NS   write: block this vCPU until an event arrives or N ns pass (0 = only an event)
 *   EVENTS    read: pending event bits, cleared by the read
 *   EXIT      write: the guest is done; the value is its exit code
 *   PUTS      write: address of a NUL-terminated string (<= 4 KiB) the VMM
 *             writes to the serial output in one go (one exit, not one per byte)
 */
#define DOORBELL_WAIT_NS 0x00
#define DOORBELL_EVENTS  0x08
#define DOORBELL_EVENT_SERIAL_INPUT (1u << 0) /* bytes wait in the UART receive queue */
#define DOORBELL_EVENT_NETWORK      (1u << 1) /* virtio-net returned used buffers */
#define DOORBELL_EVENT_DISK         (1u << 2) /* virtio-blk returned used buffers */
#define DOORBELL_EXIT    0x10
#define DOORBELL_PUTS    0x18

static inline void mmio_write64(uint64_t address, uint64_t value) {
    *(volatile uint64_t *)address = value;
}
static inline uint64_t mmio_read64(uint64_t address) {
    return *(volatile uint64_t *)address;
}
static inline void mmio_write8(uint64_t address, uint8_t value) {
    *(volatile uint8_t *)address = value;
}
static inline uint8_t mmio_read8(uint64_t address) {
    return *(volatile uint8_t *)address;
}
static inline void mmio_write32(uint64_t address, uint32_t value) {
    *(volatile uint32_t *)address = value;
}
static inline uint32_t mmio_read32(uint64_t address) {
    return *(volatile uint32_t *)address;
}
static inline uint64_t rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

#endif
