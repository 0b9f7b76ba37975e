// The libc surface the engine uses, in one module so that ordinary and Embedded
// builds import the same names (Embedded Swift has no Glibc module).
#ifndef REVERSEHTTP_CLIBC_SHIM_H
#define REVERSEHTTP_CLIBC_SHIM_H
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// accept4 is declared only under _GNU_SOURCE, which a module header should not set.
extern int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);

// errno is a macro over a function call: Swift cannot import it.
static inline int rh_errno(void) { return errno; }
static inline void rh_set_errno(int value) { errno = value; }

// Monotonic and wall clocks in nanoseconds.
static inline unsigned long long rh_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}
static inline long long rh_wall_seconds(void) { return (long long)time(NULL); }

// sigset_t manipulation macros/functions in one call.
static inline int rh_block_signals(const int *signals, int count, sigset_t *set) {
    sigemptyset(set);
    for (int i = 0; i < count; i++) sigaddset(set, signals[i]);
    return sigprocmask(SIG_BLOCK, set, NULL);
}
static inline int rh_signalfd(const sigset_t *set) {
    return signalfd(-1, set, SFD_NONBLOCK | SFD_CLOEXEC);
}
static inline int rh_ignore_sigpipe(void) { return signal(SIGPIPE, SIG_IGN) == SIG_ERR ? -1 : 0; }

// Socket address helpers: Swift's view of the sockaddr unions is awkward.
static inline socklen_t rh_sockaddr_len(const struct sockaddr_storage *ss) {
    return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}
// Text form "1.2.3.4" or "::1" of a socket address, and its port; 0 on success.
static inline int rh_sockaddr_text(const struct sockaddr_storage *ss, char *out, size_t len, int *port) {
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        *port = ntohs(in->sin_port);
        return inet_ntop(AF_INET, &in->sin_addr, out, len) ? 0 : -1;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        *port = ntohs(in6->sin6_port);
        return inet_ntop(AF_INET6, &in6->sin6_addr, out, len) ? 0 : -1;
    }
    return -1;
}
static inline int rh_is_signal_exit(int status) { return WIFSIGNALED(status); }
#endif
