/* net.h - one lwIP network interface over the virtio-net driver, and the
 * polling loop that drives it (netif.c). */
#ifndef GUEST_NET_H
#define GUEST_NET_H

#include "lwip/netif.h"
#include "../drivers/virtio.h"

extern struct netif net_if;
extern struct vnet net_card;

/* Finds the virtio-net device and reads ip=, mask=, gw= from the command
 * line; starts lwIP and brings the interface up. Returns 0, or -1 when
 * there is no card or no ip= (the caller then runs without network). */
int net_setup(void);
/* One round: received frames into lwIP (at most `budget`), lwIP timers,
 * then one notify for the frames transmitted meanwhile (deferred while
 * frames keep arriving, see netif.c). Returns frames received. */
int net_poll(int budget);
/* Sleeps until a frame may have arrived, the next lwIP timer is due, or
 * max_us passed (spins briefly first: waking costs exits). */
void net_idle(uint64_t max_us);
/* "a.b.c.d" of the interface. */
const char *net_address(void);

#endif
