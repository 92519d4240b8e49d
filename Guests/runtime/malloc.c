/* malloc.c - the guest heap over boot_info free memory .. end of RAM.
 *
 * Every block has a 16-byte header {size, class}. Blocks up to 256 KiB come
 * in power-of-two size classes, each with its own free list (fast, reused
 * exactly). Larger blocks are carved first-fit from an address-ordered free
 * list whose neighbours merge on free, or else from the untouched top of the
 * heap (the "bump" region), so big buffers (e.g. a 100 MB blob) can be freed
 * and allocated again without running out. Single-threaded (vCPU 0 only).
 */
#include "runtime.h"

#define HEADER 16
#define MIN_SHIFT 5                 /* smallest class: 32 bytes including the header */
#define MAX_SHIFT 18                /* largest class: 256 KiB */
#define LARGE 0xffffffffu

struct header { uint64_t size; uint32_t class; uint32_t magic; };
struct large_free { uint64_t size; struct large_free *next; };  /* size includes everything */

#define MAGIC 0x484541u

static uint64_t bump, end;
static void *class_free[MAX_SHIFT + 1];
static struct large_free *large_list;

void malloc_init(uint64_t base, uint64_t limit) {
    bump = (base + 4095) & ~4095ULL;
    end = limit & ~4095ULL;
}

size_t heap_unused(void) { return end - bump; }

static void *take_bump(uint64_t total) {
    if (end - bump < total) return NULL;
    void *p = (void *)bump;
    bump += total;
    return p;
}

static void *large_alloc(uint64_t total) {
    total = (total + 4095) & ~4095ULL;
    for (struct large_free **link = &large_list; *link; link = &(*link)->next) {
        struct large_free *block = *link;
        if (block->size < total) continue;
        if (block->size - total >= 4096) {       /* split: keep the tail free */
            struct large_free *rest = (struct large_free *)((uint8_t *)block + total);
            rest->size = block->size - total;
            rest->next = block->next;
            *link = rest;
        } else {
            total = block->size;
            *link = block->next;
        }
        struct header *h = (struct header *)block;
        h->size = total;
        return h;
    }
    struct header *h = take_bump(total);
    if (h) h->size = total;
    return h;
}

static void large_free(struct header *h) {
    struct large_free *block = (struct large_free *)h;
    uint64_t size = h->size;
    if ((uint64_t)block + size == bump) { bump = (uint64_t)block; /* give back to the top */
        /* the highest free block may now touch the top too */
        struct large_free **link = &large_list, *last = NULL, **last_link = NULL;
        for (; *link; link = &(*link)->next) { last = *link; last_link = link; }
        if (last && (uint64_t)last + last->size == bump) { bump = (uint64_t)last; *last_link = NULL; }
        return;
    }
    struct large_free **link = &large_list;
    while (*link && *link < block) link = &(*link)->next;
    block->size = size;
    block->next = *link;
    *link = block;
    if (block->next && (uint8_t *)block + block->size == (uint8_t *)block->next) {
        block->size += block->next->size;
        block->next = block->next->next;
    }
    /* merge with the predecessor */
    for (struct large_free *prev = large_list; prev && prev != block; prev = prev->next) {
        if (prev->next == block && (uint8_t *)prev + prev->size == (uint8_t *)block) {
            prev->size += block->size;
            prev->next = block->next;
            break;
        }
    }
}

void *malloc(size_t size) {
    uint64_t total = (uint64_t)size + HEADER;
    struct header *h;
    if (total <= (1ULL << MAX_SHIFT)) {
        unsigned shift = MIN_SHIFT;
        while ((1ULL << shift) < total) shift++;
        if (class_free[shift]) {
            h = class_free[shift];
            class_free[shift] = *(void **)((uint8_t *)h + HEADER);
        } else {
            h = take_bump(1ULL << shift);
            if (!h) return NULL;
        }
        h->size = 1ULL << shift;
        h->class = shift;
    } else {
        h = large_alloc(total);
        if (!h) return NULL;
        h->class = LARGE;
    }
    h->magic = MAGIC;
    return (uint8_t *)h + HEADER;
}

void free(void *pointer) {
    if (!pointer) return;
    struct header *h = (struct header *)((uint8_t *)pointer - HEADER);
    if (h->magic != MAGIC) panic("free: bad pointer %p", pointer);
    h->magic = 0;
    if (h->class == LARGE) {
        large_free(h);
    } else {
        *(void **)pointer = class_free[h->class];
        class_free[h->class] = h;
    }
}

void *calloc(size_t count, size_t size) {
    if (size && count > (size_t)-1 / size) return NULL;
    void *p = malloc(count * size);
    if (p) memset(p, 0, count * size);
    return p;
}

void *realloc(void *pointer, size_t size) {
    if (!pointer) return malloc(size);
    struct header *h = (struct header *)((uint8_t *)pointer - HEADER);
    if (h->size - HEADER >= size) return pointer;
    void *fresh = malloc(size);
    if (!fresh) return NULL;
    memcpy(fresh, pointer, h->size - HEADER);
    free(pointer);
    return fresh;
}
