/* virtio.h - polling drivers for MicroVM's virtio-mmio devices (modern
 * register layout, version 2; split virtqueues; no interrupts, no indirect
 * descriptors, no event index).
 *
 * Every register access is a VM exit (~36 µs on kvm_pvm), so the drivers
 * touch registers only to set up and to notify a queue; completions are
 * found by polling the used ring in guest memory (identity mapped, so guest
 * virtual == guest physical addresses). */
#ifndef GUEST_VIRTIO_H
#define GUEST_VIRTIO_H

#include <stddef.h>
#include <stdint.h>

/* virtio-mmio registers (offsets from the device base) */
#define VIRTIO_MMIO_MAGIC            0x000
#define VIRTIO_MMIO_VERSION          0x004
#define VIRTIO_MMIO_DEVICE_ID        0x008
#define VIRTIO_MMIO_DEVICE_FEATURES  0x010
#define VIRTIO_MMIO_DEVICE_FEAT_SEL  0x014
#define VIRTIO_MMIO_DRIVER_FEATURES  0x020
#define VIRTIO_MMIO_DRIVER_FEAT_SEL  0x024
#define VIRTIO_MMIO_QUEUE_SEL        0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX    0x034
#define VIRTIO_MMIO_QUEUE_NUM        0x038
#define VIRTIO_MMIO_QUEUE_READY      0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY     0x050
#define VIRTIO_MMIO_STATUS           0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW   0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH  0x084
#define VIRTIO_MMIO_QUEUE_AVAIL_LOW  0x090
#define VIRTIO_MMIO_QUEUE_AVAIL_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_USED_LOW   0x0a0
#define VIRTIO_MMIO_QUEUE_USED_HIGH  0x0a4
#define VIRTIO_MMIO_CONFIG           0x100

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER      2
#define VIRTIO_STATUS_DRIVER_OK   4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED      0x80

#define VIRTIO_F_VERSION_1 (1ULL << 32)

#define VIRTQ_DESC_F_NEXT  1
#define VIRTQ_DESC_F_WRITE 2

struct virtq_desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct virtq_used_elem { uint32_t id, len; };

/* One split virtqueue, driver side. */
struct virtq {
    uint16_t size, index;
    struct virtq_desc *desc;
    volatile uint16_t *avail;            /* flags, idx, ring[size] */
    volatile uint16_t *used_idx;         /* points at used->idx */
    volatile struct virtq_used_elem *used_ring;
    uint16_t avail_idx;                  /* our copy of avail->idx */
    uint16_t last_used;                  /* next used entry to consume */
};

struct virtio_dev {
    uint64_t base;
    uint64_t features;                   /* negotiated */
};

/* Resets the device at `base`, checks it is virtio-mmio v2 of `device_id`,
 * negotiates VERSION_1 | (wanted & offered). Returns 0, or -1 on failure. */
int virtio_begin(struct virtio_dev *dev, uint64_t base, uint32_t device_id, uint64_t wanted);
/* Allocates and registers queue `index` with up to `size` entries. 0 or -1. */
int virtq_init(struct virtio_dev *dev, struct virtq *q, uint16_t index, uint16_t size);
/* Sets DRIVER_OK. */
void virtio_ready(struct virtio_dev *dev);
/* Reads `length` (1, 2, 4) bytes of the device config space. */
uint32_t virtio_config(struct virtio_dev *dev, uint32_t offset, int length);

/* Makes chain `head` available (no notify). */
static inline void virtq_push(struct virtq *q, uint16_t head) {
    q->avail[2 + q->avail_idx % q->size] = head;
    q->avail_idx++;
    __asm__ volatile("" ::: "memory");   /* x86: stores stay ordered; keep the compiler from reordering */
    q->avail[1] = q->avail_idx;
}
static inline int virtq_has_used(const struct virtq *q) { return *q->used_idx != q->last_used; }
/* Notifies the device about queue q (one VM exit). */
void virtq_notify(struct virtio_dev *dev, struct virtq *q);

/* ---- virtio-net ---- */
#define VNET_HEADER 12
#define VNET_BUFFER 2048                 /* header + a 1514-byte frame fits */

struct vnet {
    struct virtio_dev dev;
    struct virtq rx, tx;
    uint8_t mac[6];
    uint8_t *rx_buffers, *tx_buffers;    /* VNET_BUFFER bytes per descriptor */
    uint16_t *tx_free;                   /* stack of free tx descriptors */
    uint16_t tx_free_count;
    uint16_t rx_posted;                  /* rx buffers the device holds */
    int tx_unnotified;                   /* frames made available since the last notify */
    uint64_t rx_frames, tx_frames, notifies;
};

int vnet_init(struct vnet *n, uint64_t base);
/* Hands each received frame (without the virtio header) to `deliver` and
 * re-posts its buffer; at most `budget` frames. Returns how many. */
int vnet_poll(struct vnet *n, void (*deliver)(void *ctx, const uint8_t *frame, size_t len), void *ctx, int budget);
/* A buffer for the next frame (VNET_BUFFER - VNET_HEADER bytes), reclaiming
 * and notifying as needed; vnet_tx_commit makes it available. */
uint8_t *vnet_tx_begin(struct vnet *n);
void vnet_tx_commit(struct vnet *n, size_t len);
/* Notifies the tx queue if frames are waiting (call once per batch). */
void vnet_kick(struct vnet *n);
static inline int vnet_rx_ready(const struct vnet *n) { return virtq_has_used(&n->rx); }

/* ---- virtio-blk ---- */
struct vblk {
    struct virtio_dev dev;
    struct virtq q;
    uint64_t sectors;                    /* capacity in 512-byte sectors */
    int can_flush;
};

int vblk_init(struct vblk *b, uint64_t base);
/* Synchronous requests; 0 on success, else the virtio status (or -1). */
int vblk_read(struct vblk *b, uint64_t sector, void *buffer, uint32_t count);
int vblk_write(struct vblk *b, uint64_t sector, const void *buffer, uint32_t count);
int vblk_flush(struct vblk *b);

#endif
