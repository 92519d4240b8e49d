/* lwipopts.h - lwIP configuration of the MicroVM guests.
 *
 * NO_SYS (one polling loop, no threads), raw API only, IPv4 + ARP + ICMP +
 * TCP over Ethernet; no UDP, DHCP, DNS or IPv6. Tuned for throughput on a
 * machine where every device exit is expensive: large windows (window
 * scaling), large send buffers, plenty of segments and pbufs, and at least
 * 128 TCP PCBs for many concurrent connections. Dynamic memory (pbuf payloads,
 * PCBs) comes from the guest heap (MEM_LIBC_MALLOC), so it grows with the
 * guest's RAM instead of a fixed MEM_SIZE array.
 */
#ifndef LWIPOPTS_H
#define LWIPOPTS_H

#define NO_SYS                      1
#define SYS_LIGHTWEIGHT_PROT        0
#define LWIP_SOCKET                 0
#define LWIP_NETCONN                0
#define LWIP_TIMERS                 1

#define LWIP_IPV4                   1
#define LWIP_IPV6                   0
#define LWIP_ARP                    1
#define LWIP_ETHERNET               1
#define LWIP_ICMP                   1
#define LWIP_RAW                    0
#define LWIP_UDP                    0
#define LWIP_TCP                    1
#define LWIP_DHCP                   0
#define LWIP_AUTOIP                 0
#define LWIP_DNS                    0
#define LWIP_IGMP                   0
#define IP_REASSEMBLY               0
#define IP_FRAG                     0
#define LWIP_SINGLE_NETIF           1
#define LWIP_NETIF_LOOPBACK         0
#define LWIP_HAVE_LOOPIF            0
#define LWIP_STATS                  0
#define LWIP_NETIF_TX_SINGLE_PBUF   0

/* memory: lwIP's heap is the guest heap; pools are static */
#define MEM_LIBC_MALLOC             1
#define MEM_ALIGNMENT               8
#define MEM_SIZE                    (16 * 1024 * 1024)   /* unused with MEM_LIBC_MALLOC */
#define MEMP_NUM_PBUF               1024
#define MEMP_NUM_TCP_PCB            128
#define MEMP_NUM_TCP_PCB_LISTEN     8
#define MEMP_NUM_TCP_SEG            8192
#define MEMP_NUM_ARP_QUEUE          64
#define PBUF_POOL_SIZE              2048
#define PBUF_POOL_BUFSIZE           1536
#define ARP_TABLE_SIZE              16
#define ARP_QUEUEING                1

/* TCP */
#define TCP_MSS                     1460
#define LWIP_WND_SCALE              1
#define TCP_RCV_SCALE               2
#define TCP_WND                     (192 * 1024)
#define TCP_SND_BUF                 (256 * 1024)
#define TCP_SND_QUEUELEN            (4 * TCP_SND_BUF / TCP_MSS)
#define TCP_SNDLOWAT                (0xFFFF - 4 * TCP_MSS - 1)
#define TCP_SNDQUEUELOWAT           (TCP_SND_QUEUELEN / 4)
#define TCP_QUEUE_OOSEQ             1
#define TCP_OVERSIZE                TCP_MSS
#define LWIP_TCP_TIMESTAMPS         0
#define LWIP_TCP_KEEPALIVE          0
#define TCP_LISTEN_BACKLOG          0
#define LWIP_CHECKSUM_ON_COPY       1
#define LWIP_TCP_SACK_OUT           0

#endif
