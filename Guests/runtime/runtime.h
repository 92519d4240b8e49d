/* runtime.h - the freestanding C runtime of the MicroVM guests.
 *
 * What a guest program gets (the .c files of Guests/runtime):
 *   - entry: _start (crt.c) calls `int main(void)` on vCPU 0 and parks other vCPUs;
 *     main's return value becomes the doorbell EXIT code
 *   - the boot-info page (`boot`), command-line options (option_*)
 *   - string/memory functions (string.c), malloc/free/realloc/calloc (malloc.c)
 *   - printf/snprintf/vsnprintf through the doorbell's PUTS (print.c), panic()
 *   - time from rdtsc: now_us/now_ms, doorbell waits and exit
 */
#ifndef GUEST_RUNTIME_H
#define GUEST_RUNTIME_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include "../include/understudy_guest.h"

extern const struct boot_info *boot;

/* --- command line ("key=value key2=value2 ...") --- */
/* The value of `key` copied into out (NUL-terminated); 0 if absent. */
int option_str(const char *key, char *out, size_t size);
/* The decimal value of `key`, or `fallback` if absent or not a number. */
uint64_t option_u64(const char *key, uint64_t fallback);
/* Parses a dotted IPv4 address into network byte order; 0 on failure. */
int parse_ipv4(const char *text, uint32_t *out);

/* --- devices --- */
/* Base address of the first boot-info device of `type` (DEVICE_TYPE_*), or 0. */
uint64_t find_device(uint32_t type);

/* --- time --- */
uint64_t now_us(void);
uint32_t now_ms(void);
/* Blocks until a doorbell event or `ns` nanoseconds (a VM exit). */
void doorbell_wait_ns(uint64_t ns);
/* Reads and clears pending doorbell events (a VM exit). */
uint64_t doorbell_events(void);
__attribute__((noreturn)) void guest_exit(uint64_t code);
/* Parks this vCPU for good (waits in long doorbell sleeps). */
__attribute__((noreturn)) void wait_forever(void);

/* --- output --- */
int vsnprintf(char *out, size_t size, const char *format, va_list args);
int snprintf(char *out, size_t size, const char *format, ...) __attribute__((format(printf, 3, 4)));
/* Formats and prints in one PUTS exit (at most 4 KiB per call). */
int printf(const char *format, ...) __attribute__((format(printf, 1, 2)));
/* Prints a NUL-terminated string as is. */
void console_write(const char *text);
__attribute__((noreturn)) void panic(const char *format, ...) __attribute__((format(printf, 1, 2)));

/* --- memory --- */
void *malloc(size_t size);
void *calloc(size_t count, size_t size);
void *realloc(void *pointer, size_t size);
void free(void *pointer);
/* Bytes the allocator can still hand out from never-used memory. */
size_t heap_unused(void);

/* --- strings (string.c) --- */
void *memcpy(void *restrict dst, const void *restrict src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
void *memchr(const void *s, int c, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strchr(const char *s, int c);
char *strrchr(const char *s, int c);
char *strcpy(char *restrict dst, const char *restrict src);
char *strncpy(char *restrict dst, const char *restrict src, size_t n);
char *strstr(const char *haystack, const char *needle);
int atoi(const char *s);
long strtol(const char *s, char **end, int base);

/* --- hashes --- */
#define FNV1A_INIT 0xcbf29ce484222325ULL
static inline uint64_t fnv1a(uint64_t hash, const void *data, size_t n) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) { hash ^= p[i]; hash *= 0x100000001b3ULL; }
    return hash;
}
uint32_t crc32(uint32_t crc, const void *data, size_t n);

#define barrier() __asm__ volatile("" ::: "memory")

#endif
