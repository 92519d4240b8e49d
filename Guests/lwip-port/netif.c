/* netif.c - the lwIP netif over virtio-net and the guest's network loop.
 *
 * Receive: each frame is copied from the virtio buffer into a PBUF_POOL
 * chain and given to ethernet_input (the virtio buffer is re-posted at
 * once). Transmit: linkoutput copies the pbuf chain into a transmit buffer;
 * the device is notified when a net_poll round found no new frame, or when
 * many frames or 300 us have gathered (or 64 frames wait in linkoutput),
 * since each notify is a VM exit. */
#include "net.h"
#include "lwip/init.h"
#include "lwip/etharp.h"
#include "lwip/timeouts.h"
#include "lwip/pbuf.h"
#include "netif/ethernet.h"
#include "../runtime/runtime.h"

struct netif net_if;
struct vnet net_card;
static uint64_t spin_us;                /* cmdline spin_us=: busy-poll before sleeping */
static uint64_t tx_pending_since;       /* when the oldest un-notified frame was queued */

u32_t sys_now(void) { return now_ms(); }

static err_t linkoutput(struct netif *nif, struct pbuf *p) {
    (void)nif;
    if (p->tot_len > VNET_BUFFER - VNET_HEADER) return ERR_BUF;
    if (net_card.tx_unnotified == 0) tx_pending_since = now_us();
    uint8_t *buffer = vnet_tx_begin(&net_card);
    pbuf_copy_partial(p, buffer, p->tot_len, 0);
    vnet_tx_commit(&net_card, p->tot_len);
    if (net_card.tx_unnotified >= 64) vnet_kick(&net_card);
    return ERR_OK;
}

static err_t card_init(struct netif *nif) {
    nif->name[0] = 'v';
    nif->name[1] = 'n';
    nif->mtu = 1500;
    nif->hwaddr_len = 6;
    memcpy(nif->hwaddr, net_card.mac, 6);
    nif->flags = NETIF_FLAG_BROADCAST | NETIF_FLAG_ETHARP | NETIF_FLAG_ETHERNET | NETIF_FLAG_LINK_UP;
    nif->output = etharp_output;
    nif->linkoutput = linkoutput;
    return ERR_OK;
}

static void deliver(void *ctx, const uint8_t *frame, size_t len) {
    (void)ctx;
    struct pbuf *p = pbuf_alloc(PBUF_RAW, (u16_t)len, PBUF_POOL);
    if (!p) return;                     /* out of pbufs: drop, TCP retransmits */
    pbuf_take(p, frame, (u16_t)len);
    if (net_if.input(p, &net_if) != ERR_OK) pbuf_free(p);
}

static int option_ip(const char *key, ip4_addr_t *out, const char *fallback) {
    char text[32];
    uint32_t v;
    if (!option_str(key, text, sizeof text)) {
        if (!fallback) return 0;
        strcpy(text, fallback);
    }
    if (!parse_ipv4(text, &v)) return 0;
    out->addr = v;
    return 1;
}

int net_setup(void) {
    uint64_t base = find_device(DEVICE_TYPE_VIRTIO_NET);
    ip4_addr_t ip, mask, gw;
    if (!base || !option_ip("ip", &ip, NULL)) return -1;
    if (!option_ip("mask", &mask, "255.255.255.0")) return -1;
    if (!option_ip("gw", &gw, "0.0.0.0")) return -1;
    spin_us = option_u64("spin_us", 50);
    if (vnet_init(&net_card, base)) return -1;
    lwip_init();
    if (!netif_add(&net_if, &ip, &mask, &gw, NULL, card_init, ethernet_input)) return -1;
    netif_set_default(&net_if);
    netif_set_up(&net_if);
    etharp_gratuitous(&net_if);
    vnet_kick(&net_card);
    return 0;
}

int net_poll(int budget) {
    int n = vnet_poll(&net_card, deliver, NULL, budget);
    sys_check_timeouts();
    /* While frames keep arriving, let ACKs and replies gather (up to 32
     * frames or 300 us) so one notify exit sends them all; notify at once
     * when the receive side went quiet. */
    if (n == 0 || net_card.tx_unnotified >= 32 || now_us() - tx_pending_since > 300)
        vnet_kick(&net_card);
    return n;
}

void net_idle(uint64_t max_us) {
    uint64_t sleep_us = max_us;
    u32_t ms = sys_timeouts_sleeptime();
    if (ms != SYS_TIMEOUTS_SLEEPTIME_INFINITE && (uint64_t)ms * 1000 < sleep_us) sleep_us = (uint64_t)ms * 1000;
    if (sleep_us == 0) return;
    /* A frame often follows shortly (an ACK, the next request): spinning a
     * little is cheaper than the two exits of a wait. */
    uint64_t spin_until = now_us() + (sleep_us < spin_us ? sleep_us : spin_us);
    while (now_us() < spin_until)
        if (vnet_rx_ready(&net_card)) return;
    doorbell_events();                  /* clear, then look again: no lost wake-up */
    if (vnet_rx_ready(&net_card)) return;
    doorbell_wait_ns(sleep_us * 1000);
}

const char *net_address(void) {
    static char text[16];
    return ip4addr_ntoa_r(netif_ip4_addr(&net_if), text, sizeof text);
}
