/* virtio_blk.c - synchronous polling virtio-blk driver.
 *
 * A request is a 3-descriptor chain: 16-byte header (type, reserved,
 * sector), the data buffer (device-writable for reads), and a 1-byte status
 * the device writes. MicroVM serves requests during the notify exit; the
 * driver still polls the used ring, as a real device may take longer. */
#include "virtio.h"
#include "../runtime/runtime.h"

#define VIRTIO_BLK_F_FLUSH (1ULL << 9)
#define VIRTIO_BLK_T_IN    0
#define VIRTIO_BLK_T_OUT   1
#define VIRTIO_BLK_T_FLUSH 4

struct blk_header { uint32_t type, reserved; uint64_t sector; };

static struct blk_header header;
static volatile uint8_t status;

int vblk_init(struct vblk *b, uint64_t base) {
    memset(b, 0, sizeof *b);
    if (virtio_begin(&b->dev, base, 2, VIRTIO_BLK_F_FLUSH)) return -1;
    if (virtq_init(&b->dev, &b->q, 0, 128)) { printf("virtio-blk: queue setup failed\n"); return -1; }
    b->sectors = virtio_config(&b->dev, 0, 4) | (uint64_t)virtio_config(&b->dev, 4, 4) << 32;
    b->can_flush = (b->dev.features & VIRTIO_BLK_F_FLUSH) != 0;
    virtio_ready(&b->dev);
    return 0;
}

static int request(struct vblk *b, uint32_t type, uint64_t sector, void *data, uint32_t bytes) {
    header = (struct blk_header){ type, 0, sector };
    status = 0xff;
    struct virtq_desc *d = b->q.desc;
    d[0] = (struct virtq_desc){ (uint64_t)&header, sizeof header, VIRTQ_DESC_F_NEXT, 1 };
    uint16_t last = 0;
    if (bytes) {
        d[1] = (struct virtq_desc){ (uint64_t)data, bytes,
                                    (uint16_t)(VIRTQ_DESC_F_NEXT | (type == VIRTIO_BLK_T_IN ? VIRTQ_DESC_F_WRITE : 0)), 2 };
        last = 1;
    }
    d[last].next = (uint16_t)(last + 1);
    d[last + 1] = (struct virtq_desc){ (uint64_t)&status, 1, VIRTQ_DESC_F_WRITE, 0 };
    virtq_push(&b->q, 0);
    virtq_notify(&b->dev, &b->q);
    while (!virtq_has_used(&b->q)) doorbell_wait_ns(100000);
    b->q.last_used = *b->q.used_idx;
    barrier();
    return status;
}

int vblk_read(struct vblk *b, uint64_t sector, void *buffer, uint32_t count) {
    return request(b, VIRTIO_BLK_T_IN, sector, buffer, count * 512);
}

int vblk_write(struct vblk *b, uint64_t sector, const void *buffer, uint32_t count) {
    return request(b, VIRTIO_BLK_T_OUT, sector, (void *)buffer, count * 512);
}

int vblk_flush(struct vblk *b) {
    if (!b->can_flush) return 0;
    return request(b, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
}
