// CKVM: the C shim under the KVM module.
//
// Swift cannot import the function-like macros <linux/kvm.h> uses for ioctl
// request numbers, nor the flexible-array structs it uses for MSR and CPUID
// lists. This header re-exports them as `static const` values and `static
// inline` helpers with a `ckvm_` prefix. Nothing here holds state.
#ifndef CKVM_H
#define CKVM_H

#include <linux/kvm.h>
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <signal.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/memfd.h>

// MARK: - ioctl request numbers

// System (/dev/kvm)
static const unsigned long CKVM_GET_API_VERSION = KVM_GET_API_VERSION;
static const unsigned long CKVM_CREATE_VM = KVM_CREATE_VM;
static const unsigned long CKVM_CHECK_EXTENSION = KVM_CHECK_EXTENSION;
static const unsigned long CKVM_GET_VCPU_MMAP_SIZE = KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long CKVM_GET_SUPPORTED_CPUID = KVM_GET_SUPPORTED_CPUID;
static const unsigned long CKVM_GET_MSR_INDEX_LIST = KVM_GET_MSR_INDEX_LIST;

// VM
static const unsigned long CKVM_CREATE_VCPU = KVM_CREATE_VCPU;
static const unsigned long CKVM_SET_USER_MEMORY_REGION = KVM_SET_USER_MEMORY_REGION;
static const unsigned long CKVM_CREATE_IRQCHIP = KVM_CREATE_IRQCHIP;
static const unsigned long CKVM_CREATE_PIT2 = KVM_CREATE_PIT2;
static const unsigned long CKVM_REINJECT_CONTROL = KVM_REINJECT_CONTROL;
static const unsigned long CKVM_SET_TSS_ADDR = KVM_SET_TSS_ADDR;
static const unsigned long CKVM_SET_IDENTITY_MAP_ADDR = KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long CKVM_IRQ_LINE = KVM_IRQ_LINE;
static const unsigned long CKVM_GET_CLOCK = KVM_GET_CLOCK;
static const unsigned long CKVM_SET_CLOCK = KVM_SET_CLOCK;
static const unsigned long CKVM_GET_IRQCHIP = KVM_GET_IRQCHIP;
static const unsigned long CKVM_SET_IRQCHIP = KVM_SET_IRQCHIP;
static const unsigned long CKVM_GET_PIT2 = KVM_GET_PIT2;
static const unsigned long CKVM_SET_PIT2 = KVM_SET_PIT2;
static const unsigned long CKVM_GET_DIRTY_LOG = KVM_GET_DIRTY_LOG;
static const unsigned long CKVM_CLEAR_DIRTY_LOG = KVM_CLEAR_DIRTY_LOG;
static const unsigned long CKVM_RESET_DIRTY_RINGS = KVM_RESET_DIRTY_RINGS;
static const unsigned long CKVM_ENABLE_CAP = KVM_ENABLE_CAP;

// vCPU
static const unsigned long CKVM_RUN = KVM_RUN;
static const unsigned long CKVM_GET_REGS = KVM_GET_REGS;
static const unsigned long CKVM_SET_REGS = KVM_SET_REGS;
static const unsigned long CKVM_GET_SREGS = KVM_GET_SREGS;
static const unsigned long CKVM_SET_SREGS = KVM_SET_SREGS;
static const unsigned long CKVM_GET_FPU = KVM_GET_FPU;
static const unsigned long CKVM_GET_XSAVE = KVM_GET_XSAVE;
static const unsigned long CKVM_GET_XSAVE2 = KVM_GET_XSAVE2;
static const unsigned long CKVM_SET_XSAVE = KVM_SET_XSAVE;
static const unsigned long CKVM_GET_XCRS = KVM_GET_XCRS;
static const unsigned long CKVM_SET_XCRS = KVM_SET_XCRS;
static const unsigned long CKVM_GET_LAPIC = KVM_GET_LAPIC;
static const unsigned long CKVM_SET_LAPIC = KVM_SET_LAPIC;
static const unsigned long CKVM_GET_MSRS = KVM_GET_MSRS;
static const unsigned long CKVM_SET_MSRS = KVM_SET_MSRS;
static const unsigned long CKVM_GET_VCPU_EVENTS = KVM_GET_VCPU_EVENTS;
static const unsigned long CKVM_SET_VCPU_EVENTS = KVM_SET_VCPU_EVENTS;
static const unsigned long CKVM_GET_MP_STATE = KVM_GET_MP_STATE;
static const unsigned long CKVM_SET_MP_STATE = KVM_SET_MP_STATE;
static const unsigned long CKVM_GET_DEBUGREGS = KVM_GET_DEBUGREGS;
static const unsigned long CKVM_SET_DEBUGREGS = KVM_SET_DEBUGREGS;
static const unsigned long CKVM_SET_CPUID2 = KVM_SET_CPUID2;
static const unsigned long CKVM_GET_CPUID2 = KVM_GET_CPUID2;
static const unsigned long CKVM_GET_TSC_KHZ = KVM_GET_TSC_KHZ;

// Constants Swift does not see through macros that use casts.
static const uint64_t CKVM_DIRTY_LOG_PAGE_OFFSET = KVM_DIRTY_LOG_PAGE_OFFSET;
static const uint32_t CKVM_DIRTY_GFN_F_DIRTY = KVM_DIRTY_GFN_F_DIRTY;
static const uint32_t CKVM_DIRTY_GFN_F_RESET = KVM_DIRTY_GFN_F_RESET;

// MARK: - ioctl wrappers
//
// `ioctl` is variadic and so not callable from Swift; these take the
// argument as either an integer or a pointer. Both return the raw result
// (-1 with errno set on failure).

static inline int ckvm_ioctl_arg(int fd, unsigned long request, unsigned long arg) {
    return ioctl(fd, request, arg);
}

static inline int ckvm_ioctl_ptr(int fd, unsigned long request, void *arg) {
    return ioctl(fd, request, arg);
}

static inline int ckvm_errno(void) { return errno; }

/// memfd_create(2) with MFD_CLOEXEC (glibc hides the wrapper without _GNU_SOURCE).
static inline int ckvm_memfd_create(const char *name) {
    return (int)syscall(SYS_memfd_create, name, MFD_CLOEXEC);
}

// MARK: - kvm_run helpers

/// Sets or clears `immediate_exit` with a sequentially consistent store, so a
/// thread other than the vCPU's own can ask it to leave KVM_RUN.
static inline void ckvm_run_set_immediate_exit(struct kvm_run *run, uint8_t value) {
    __atomic_store_n(&run->immediate_exit, value, __ATOMIC_SEQ_CST);
}

static inline uint8_t ckvm_run_immediate_exit(const struct kvm_run *run) {
    return __atomic_load_n(&run->immediate_exit, __ATOMIC_SEQ_CST);
}

// MARK: - dirty ring entries (shared with the kernel: acquire/release)

static inline uint32_t ckvm_dirty_gfn_load_flags(const struct kvm_dirty_gfn *gfn) {
    return __atomic_load_n(&gfn->flags, __ATOMIC_ACQUIRE);
}

static inline void ckvm_dirty_gfn_store_flags(struct kvm_dirty_gfn *gfn, uint32_t flags) {
    __atomic_store_n(&gfn->flags, flags, __ATOMIC_RELEASE);
}

// MARK: - variable-length structs

/// Allocates a zeroed `kvm_msrs` with room for `count` entries (free with `free`).
static inline struct kvm_msrs *ckvm_msrs_alloc(uint32_t count) {
    struct kvm_msrs *m = calloc(1, sizeof(struct kvm_msrs) + (size_t)count * sizeof(struct kvm_msr_entry));
    if (m) m->nmsrs = count;
    return m;
}

static inline struct kvm_msr_entry *ckvm_msrs_entries(struct kvm_msrs *m) { return m->entries; }

/// Allocates a zeroed `kvm_cpuid2` with room for `count` entries (free with `free`).
static inline struct kvm_cpuid2 *ckvm_cpuid2_alloc(uint32_t count) {
    struct kvm_cpuid2 *c = calloc(1, sizeof(struct kvm_cpuid2) + (size_t)count * sizeof(struct kvm_cpuid_entry2));
    if (c) c->nent = count;
    return c;
}

static inline struct kvm_cpuid_entry2 *ckvm_cpuid2_entries(struct kvm_cpuid2 *c) { return c->entries; }

/// Allocates a zeroed `kvm_msr_list` with room for `count` indices (free with `free`).
static inline struct kvm_msr_list *ckvm_msr_list_alloc(uint32_t count) {
    struct kvm_msr_list *l = calloc(1, sizeof(struct kvm_msr_list) + (size_t)count * sizeof(uint32_t));
    if (l) l->nmsrs = count;
    return l;
}

static inline uint32_t *ckvm_msr_list_indices(struct kvm_msr_list *l) { return l->indices; }

// MARK: - the kick signal

static void ckvm_kick_handler(int signo) { (void)signo; }

/// The signal used to make a vCPU thread leave KVM_RUN: SIGRTMIN + 2.
static inline int ckvm_kick_signal(void) { return SIGRTMIN + 2; }

/// Installs a no-op handler for `signo` without SA_RESTART, so that a blocking
/// KVM_RUN returns EINTR when the signal arrives. Returns 0 or -1 with errno.
static inline int ckvm_install_kick_handler(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = ckvm_kick_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    return sigaction(signo, &sa, NULL);
}

/// Unblocks `signo` in the calling thread (a vCPU thread must receive it).
static inline int ckvm_unblock_signal(int signo) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

// MARK: - tap devices (<linux/if_tun.h>)

/// Opens /dev/net/tun as the tap interface `name` (created if absent), without
/// packet information headers, non-blocking. Returns the descriptor or -1 with errno.
/// (Defined in CKVM.c: <linux/if.h> clashes with glibc's <net/if.h> in a Swift module.)
int ckvm_tap_open(const char *name);

/// Moves the calling thread into the network namespace open at `fd` (setns(2),
/// CLONE_NEWNET). Returns 0 or -1 with errno. Used by tools and tests that talk
/// to guests on private test networks.
int ckvm_enter_network_namespace(int fd);
/// Deallocates [offset, offset+length) of a file, keeping its size (it reads
/// as zeros): fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE). -1 and errno on failure.
int ckvm_punch_hole(int fd, long long offset, long long length);
/// Handles `signo` by writing its number (one byte) to `fd`, whichever thread
/// it lands on (async-signal-safe), and unblocks it in the calling thread (a
/// mask inherited from a parent may have it blocked). -1 and errno on failure.
int ckvm_install_stop_signal(int signo, int fd);

// MARK: - Unix sockets

/// The user id of the process at the other end of the unix socket `fd`
/// (SO_PEERCRED) into *uid; 0 on success, -1 with errno set.
int ckvm_peer_uid(int fd, unsigned int *uid);

// MARK: - CRC-32C (Castagnoli), hardware-accelerated where the CPU has SSE4.2

static inline uint32_t ckvm_crc32c_sw(uint32_t crc, const uint8_t *p, size_t n) {
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return crc;
}

__attribute__((target("sse4.2")))
static inline uint32_t ckvm_crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}

/// CRC-32C of `n` bytes, continuing from `crc` (start with 0).
static inline uint32_t ckvm_crc32c(uint32_t crc, const void *data, size_t n) {
    crc = ~crc;
    if (__builtin_cpu_supports("sse4.2")) crc = ckvm_crc32c_hw(crc, (const uint8_t *)data, n);
    else crc = ckvm_crc32c_sw(crc, (const uint8_t *)data, n);
    return ~crc;
}

/// Prepares the calling thread to run a vCPU: unblocks `signo` once per thread.
static inline int ckvm_prepare_vcpu_thread(int signo) {
    static __thread int prepared = 0;
    if (prepared) return 0;
    int rc = ckvm_unblock_signal(signo);
    if (rc == 0) prepared = 1;
    return rc;
}

#endif
