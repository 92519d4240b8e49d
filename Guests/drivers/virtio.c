/* virtio.c - virtio-mmio transport: device initialisation, feature
 * negotiation and split-virtqueue setup (see virtio.h). */
#include "virtio.h"
#include "../runtime/runtime.h"

static uint32_t rd(struct virtio_dev *d, uint32_t off) { return mmio_read32(d->base + off); }
static void wr(struct virtio_dev *d, uint32_t off, uint32_t v) { mmio_write32(d->base + off, v); }

int virtio_begin(struct virtio_dev *dev, uint64_t base, uint32_t device_id, uint64_t wanted) {
    dev->base = base;
    if (rd(dev, VIRTIO_MMIO_MAGIC) != 0x74726976 || rd(dev, VIRTIO_MMIO_VERSION) != 2 ||
        rd(dev, VIRTIO_MMIO_DEVICE_ID) != device_id) {
        printf("virtio: no device %u at %p\n", device_id, (void *)base);
        return -1;
    }
    wr(dev, VIRTIO_MMIO_STATUS, 0);                                   /* reset */
    uint32_t status = VIRTIO_STATUS_ACKNOWLEDGE;
    wr(dev, VIRTIO_MMIO_STATUS, status);
    status |= VIRTIO_STATUS_DRIVER;
    wr(dev, VIRTIO_MMIO_STATUS, status);
    uint64_t offered = 0;
    for (uint32_t sel = 0; sel < 2; sel++) {
        wr(dev, VIRTIO_MMIO_DEVICE_FEAT_SEL, sel);
        offered |= (uint64_t)rd(dev, VIRTIO_MMIO_DEVICE_FEATURES) << (32 * sel);
    }
    if (!(offered & VIRTIO_F_VERSION_1)) { printf("virtio: device lacks VERSION_1\n"); return -1; }
    dev->features = (wanted | VIRTIO_F_VERSION_1) & offered;
    for (uint32_t sel = 0; sel < 2; sel++) {
        wr(dev, VIRTIO_MMIO_DRIVER_FEAT_SEL, sel);
        wr(dev, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(dev->features >> (32 * sel)));
    }
    status |= VIRTIO_STATUS_FEATURES_OK;
    wr(dev, VIRTIO_MMIO_STATUS, status);
    if (!(rd(dev, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
        printf("virtio: device refused features %p\n", (void *)dev->features);
        wr(dev, VIRTIO_MMIO_STATUS, status | VIRTIO_STATUS_FAILED);
        return -1;
    }
    return 0;
}

int virtq_init(struct virtio_dev *dev, struct virtq *q, uint16_t index, uint16_t size) {
    wr(dev, VIRTIO_MMIO_QUEUE_SEL, index);
    uint32_t max = rd(dev, VIRTIO_MMIO_QUEUE_NUM_MAX);
    if (max == 0) return -1;
    while (size > max) size /= 2;
    q->size = size;
    q->index = index;
    /* one page-aligned region: descriptors, then avail, then used (4-aligned) */
    size_t desc_bytes = 16u * size, avail_bytes = 6u + 2u * size;
    size_t used_offset = (desc_bytes + avail_bytes + 4095) & ~(size_t)4095;
    size_t total = used_offset + 6u + 8u * size;
    uint8_t *raw = malloc(total + 4096);
    if (!raw) return -1;
    uint8_t *mem = (uint8_t *)(((uint64_t)raw + 4095) & ~4095ULL);
    memset(mem, 0, total);
    q->desc = (struct virtq_desc *)mem;
    q->avail = (volatile uint16_t *)(mem + desc_bytes);
    q->used_idx = (volatile uint16_t *)(mem + used_offset + 2);
    q->used_ring = (volatile struct virtq_used_elem *)(mem + used_offset + 4);
    q->avail_idx = q->last_used = 0;
    uint64_t d = (uint64_t)q->desc, a = (uint64_t)q->avail, u = (uint64_t)(mem + used_offset);
    wr(dev, VIRTIO_MMIO_QUEUE_NUM, size);
    wr(dev, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)d);
    wr(dev, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(d >> 32));
    wr(dev, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (uint32_t)a);
    wr(dev, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (uint32_t)(a >> 32));
    wr(dev, VIRTIO_MMIO_QUEUE_USED_LOW, (uint32_t)u);
    wr(dev, VIRTIO_MMIO_QUEUE_USED_HIGH, (uint32_t)(u >> 32));
    wr(dev, VIRTIO_MMIO_QUEUE_READY, 1);
    if (rd(dev, VIRTIO_MMIO_QUEUE_READY) != 1) return -1;
    return 0;
}

void virtio_ready(struct virtio_dev *dev) {
    wr(dev, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
}

uint32_t virtio_config(struct virtio_dev *dev, uint32_t offset, int length) {
    uint64_t a = dev->base + VIRTIO_MMIO_CONFIG + offset;
    if (length == 1) return *(volatile uint8_t *)a;
    if (length == 2) return *(volatile uint16_t *)a;
    return *(volatile uint32_t *)a;
}

void virtq_notify(struct virtio_dev *dev, struct virtq *q) {
    barrier();
    wr(dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}
