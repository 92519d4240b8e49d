#define _GNU_SOURCE
// Out-of-line parts of the shim: those whose headers cannot be in the module map.
#include "CKVM.h"
#include <fcntl.h>
#include <net/if.h>
#include <linux/if_tun.h>

int ckvm_tap_open(const char *name) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

#include <sched.h>

int ckvm_enter_network_namespace(int fd) {
    return setns(fd, CLONE_NEWNET);
}

#include <linux/falloc.h>

int ckvm_punch_hole(int fd, long long offset, long long length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
}
