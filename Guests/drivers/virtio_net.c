/* virtio_net.c - polling virtio-net driver (queue 0 receive, queue 1 transmit).
 *
 * Descriptor i of each queue owns buffer i (VNET_BUFFER bytes): a frame is
 * one descriptor holding the 12-byte virtio_net_hdr and the frame. Receive
 * buffers are re-posted as soon as their frame was handed on. Transmit
 * copies the frame behind a zeroed header and makes it available; the
 * device sees it at the next vnet_kick (one exit for a whole batch). */
#include "virtio.h"
#include "../runtime/runtime.h"

#define VIRTIO_NET_F_MAC    (1ULL << 5)
#define VIRTIO_NET_F_STATUS (1ULL << 16)
#define QUEUE_SIZE 256

int vnet_init(struct vnet *n, uint64_t base) {
    memset(n, 0, sizeof *n);
    if (virtio_begin(&n->dev, base, 1, VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS)) return -1;
    if (virtq_init(&n->dev, &n->rx, 0, QUEUE_SIZE) || virtq_init(&n->dev, &n->tx, 1, QUEUE_SIZE)) {
        printf("virtio-net: queue setup failed\n");
        return -1;
    }
    n->rx_buffers = malloc((size_t)n->rx.size * VNET_BUFFER);
    n->tx_buffers = malloc((size_t)n->tx.size * VNET_BUFFER);
    n->tx_free = malloc(sizeof(uint16_t) * n->tx.size);
    if (!n->rx_buffers || !n->tx_buffers || !n->tx_free) return -1;
    if (n->dev.features & VIRTIO_NET_F_MAC) {
        for (int i = 0; i < 6; i++) n->mac[i] = (uint8_t)virtio_config(&n->dev, (uint32_t)i, 1);
    } else {
        static const uint8_t fallback[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };
        memcpy(n->mac, fallback, 6);
    }
    for (uint16_t i = 0; i < n->rx.size; i++) {
        n->rx.desc[i] = (struct virtq_desc){ (uint64_t)(n->rx_buffers + (size_t)i * VNET_BUFFER),
                                             VNET_BUFFER, VIRTQ_DESC_F_WRITE, 0 };
        virtq_push(&n->rx, i);
    }
    n->rx_posted = n->rx.size;
    for (uint16_t i = 0; i < n->tx.size; i++) {
        uint8_t *buffer = n->tx_buffers + (size_t)i * VNET_BUFFER;
        memset(buffer, 0, VNET_HEADER);   /* no offloads: an all-zero header */
        n->tx.desc[i] = (struct virtq_desc){ (uint64_t)buffer, 0, 0, 0 };
        n->tx_free[i] = i;
    }
    n->tx_free_count = n->tx.size;
    virtio_ready(&n->dev);
    return 0;
}

int vnet_poll(struct vnet *n, void (*deliver)(void *, const uint8_t *, size_t), void *ctx, int budget) {
    int count = 0, starved = 0;
    while (count < budget && virtq_has_used(&n->rx)) {
        barrier();
        struct virtq_used_elem e = n->rx.used_ring[n->rx.last_used % n->rx.size];
        n->rx.last_used++;
        if (--n->rx_posted == 0) starved = 1;
        uint16_t id = (uint16_t)e.id;
        if (id < n->rx.size && e.len > VNET_HEADER && e.len <= VNET_BUFFER) {
            deliver(ctx, n->rx_buffers + (size_t)id * VNET_BUFFER + VNET_HEADER, e.len - VNET_HEADER);
            n->rx_frames++;
        }
        if (id < n->rx.size) { virtq_push(&n->rx, id); n->rx_posted++; }
        count++;
    }
    /* The device holds (at most) one frame while it has no buffer, and only
     * looks again when notified: notify if we ever ran dry. */
    if (starved) { virtq_notify(&n->dev, &n->rx); n->notifies++; }
    return count;
}

/* Takes back transmit descriptors the device has finished with. */
static void tx_reclaim(struct vnet *n) {
    while (virtq_has_used(&n->tx)) {
        barrier();
        uint16_t id = (uint16_t)n->tx.used_ring[n->tx.last_used % n->tx.size].id;
        n->tx.last_used++;
        if (id < n->tx.size) n->tx_free[n->tx_free_count++] = id;
    }
}

uint8_t *vnet_tx_begin(struct vnet *n) {
    if (n->tx_free_count == 0) tx_reclaim(n);
    while (n->tx_free_count == 0) {
        vnet_kick(n);
        tx_reclaim(n);
        if (n->tx_free_count == 0) doorbell_wait_ns(20000);
    }
    uint16_t id = n->tx_free[n->tx_free_count - 1];
    return n->tx_buffers + (size_t)id * VNET_BUFFER + VNET_HEADER;
}

void vnet_tx_commit(struct vnet *n, size_t len) {
    uint16_t id = n->tx_free[--n->tx_free_count];
    n->tx.desc[id].len = (uint32_t)(VNET_HEADER + len);
    virtq_push(&n->tx, id);
    n->tx_unnotified++;
    n->tx_frames++;
}

void vnet_kick(struct vnet *n) {
    if (n->tx_unnotified) {
        virtq_notify(&n->dev, &n->tx);
        n->tx_unnotified = 0;
        n->notifies++;
    }
    tx_reclaim(n);
}
