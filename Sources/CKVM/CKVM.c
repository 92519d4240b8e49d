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

#include <signal.h>

static volatile int ckvm_stop_fd = -1;

static void ckvm_stop_handler(int signo) {
    int saved = errno;
    unsigned char byte = (unsigned char)signo;
    if (ckvm_stop_fd >= 0) (void)write(ckvm_stop_fd, &byte, 1);
    errno = saved;
}

int ckvm_install_stop_signal(int signo, int fd) {
    ckvm_stop_fd = fd;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = ckvm_stop_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(signo, &sa, NULL) != 0) return -1;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL) == 0 ? 0 : -1;
}

#include <sys/socket.h>

int ckvm_peer_uid(int fd, unsigned int *uid) {
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) < 0) return -1;
    *uid = credentials.uid;
    return 0;
}
