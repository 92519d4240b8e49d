/* arch/cc.h - lwIP's compiler/platform port for the MicroVM guests:
 * diagnostics and assertions through the guest runtime's printf/panic, byte
 * swapping by compiler builtins, a TSC-based LWIP_RAND, and no <ctype.h> or
 * <unistd.h> (there is no libc). */
#ifndef LWIP_ARCH_CC_H
#define LWIP_ARCH_CC_H

#include "../../runtime/runtime.h"

#define LWIP_NO_CTYPE_H 1
#define LWIP_NO_UNISTD_H 1
#include <sys/types.h>       /* ssize_t (lwIP sees SSIZE_MAX from <limits.h>) */

#define LWIP_PLATFORM_DIAG(x) do { printf x; } while (0)
#define LWIP_PLATFORM_ASSERT(x) panic("lwIP assertion \"%s\" failed at %s:%d", x, __FILE__, __LINE__)

/* x86 is little endian: network order needs a swap */
#define lwip_htons(x) ((u16_t)__builtin_bswap16((u16_t)(x)))
#define lwip_htonl(x) ((u32_t)__builtin_bswap32((u32_t)(x)))

/* Initial sequence numbers and ephemeral ports: good enough from the TSC. */
static inline unsigned lwip_port_rand(void) {
    uint64_t x = rdtsc() * 0x9E3779B97F4A7C15ULL;
    return (unsigned)(x >> 32);
}
#define LWIP_RAND() ((u32_t)lwip_port_rand())

#endif
