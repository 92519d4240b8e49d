/* badqueue - a test guest that hands the virtio-net device malformed
 * transmit chains, to prove the VMM refuses them and stays up.
 *
 * cmdline mode=loop|range|zero|huge|ok:
 *   loop   two descriptors that point at each other
 *   range  a buffer address far outside guest RAM
 *   zero   a zero-length buffer
 *   huge   a 4 GiB - 16 byte buffer
 *   ok     a well-formed frame (control case)
 * After notifying, it reads the device status and prints
 * "badqueue: mode=<m> status=0x<s>" (0x40 = DEVICE_NEEDS_RESET), then
 * resets the device, sends one good frame to show the device works again,
 * prints "badqueue: recovered status=0x<s>" and exits 0. */
#include "../runtime/runtime.h"
#include "../drivers/virtio.h"
#include "../include/understudy_guest.h"

static uint8_t frame[16 + 64] __attribute__((aligned(16)));

static void good_frame(struct virtq *tx) {
    memset(frame, 0, sizeof frame);
    memset(frame + VNET_HEADER, 0xff, 6);               /* broadcast destination */
    tx->desc[0] = (struct virtq_desc){ (uint64_t)frame, VNET_HEADER + 60, 0, 0 };
    virtq_push(tx, 0);
}

static uint32_t status(struct virtio_dev *dev) {
    return *(volatile uint32_t *)(dev->base + VIRTIO_MMIO_STATUS);
}

static int setup(struct virtio_dev *dev, struct virtq *rx, struct virtq *tx, uint64_t base) {
    if (virtio_begin(dev, base, 1, 1ULL << 5) != 0) return -1;
    if (virtq_init(dev, rx, 0, 16) != 0 || virtq_init(dev, tx, 1, 16) != 0) return -1;
    virtio_ready(dev);
    return 0;
}

int main(void) {
    char mode[16] = "ok";
    option_str("mode", mode, sizeof mode);
    uint64_t base = find_device(1);
    if (!base) { printf("badqueue: no network card\n"); return 2; }
    struct virtio_dev dev;
    struct virtq rx, tx;
    if (setup(&dev, &rx, &tx, base) != 0) { printf("badqueue: setup failed\n"); return 3; }

    if (!strcmp(mode, "loop")) {
        tx.desc[0] = (struct virtq_desc){ (uint64_t)frame, 8, VIRTQ_DESC_F_NEXT, 1 };
        tx.desc[1] = (struct virtq_desc){ (uint64_t)frame, 8, VIRTQ_DESC_F_NEXT, 0 };
        virtq_push(&tx, 0);
    } else if (!strcmp(mode, "range")) {
        tx.desc[0] = (struct virtq_desc){ 0x7000000000ULL, 64, 0, 0 };
        virtq_push(&tx, 0);
    } else if (!strcmp(mode, "zero")) {
        tx.desc[0] = (struct virtq_desc){ (uint64_t)frame, 0, 0, 0 };
        virtq_push(&tx, 0);
    } else if (!strcmp(mode, "huge")) {
        tx.desc[0] = (struct virtq_desc){ (uint64_t)frame, 0xfffffff0u, 0, 0 };
        virtq_push(&tx, 0);
    } else {
        good_frame(&tx);
    }
    virtq_notify(&dev, &tx);
    printf("badqueue: mode=%s status=0x%x\n", mode, status(&dev));

    /* A driver reset brings the device back. */
    if (setup(&dev, &rx, &tx, base) != 0) { printf("badqueue: reset failed\n"); return 4; }
    good_frame(&tx);
    virtq_notify(&dev, &tx);
    printf("badqueue: recovered status=0x%x\n", status(&dev));
    return 0;
}
