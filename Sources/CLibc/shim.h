// The libc surface the engine uses, in one module so that ordinary and Embedded
// builds import the same names (Embedded Swift has no Glibc module).
#ifndef REVERSEHTTP_CLIBC_SHIM_H
#define REVERSEHTTP_CLIBC_SHIM_H
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stddef.h>
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
#include <sys/un.h>
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
// Raises the soft limit on open files to the hard limit (a gateway holds one per
// device); returns the soft limit now in force.
static inline long rh_raise_nofile(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) != 0) return -1;
    if (r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &r) != 0) getrlimit(RLIMIT_NOFILE, &r);
    }
    return (long)r.rlim_cur;
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

// One datagram to the AF_UNIX socket at `path` ("@name" for the abstract
// namespace), as systemd's notify and journal protocols want. 0 or an errno.
static inline int rh_unix_datagram(const char *path, const void *buf, size_t len) {
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(sa.sun_path)) return EINVAL;
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@') sa.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno;
    ssize_t r = sendto(fd, buf, len, MSG_NOSIGNAL, (struct sockaddr *)&sa,
                       (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n));
    int e = r < 0 ? errno : 0;
    close(fd);
    return e;
}

// Memory for a long-running daemon on a small board: buffers of 16 KiB and more
// (a stream's queue, a socket read) come from mmap and go back to the kernel
// when freed, and free memory at the top of the heap is returned above 128 KiB.
// glibc would otherwise raise both thresholds after the first large free and
// keep a peak's memory forever. Measured with 64 concurrent downloads: 16.0 MiB
// resident with the defaults, 12.0 MiB with this, throughput unchanged.
static inline void rh_tune_malloc(void) {
    mallopt(M_MMAP_THRESHOLD, 16 * 1024);
    mallopt(M_TRIM_THRESHOLD, 128 * 1024);
}

// Asynchronous name resolution (glibc's getaddrinfo_a, in libc since 2.34), so a
// slow or dead DNS server never stalls the event loop. Its declarations need
// _GNU_SOURCE, which a module header must not set: the request block below has
// glibc's `struct gaicb` layout.
struct rh_gaicb {
    const char *ar_name;
    const char *ar_service;
    const struct addrinfo *ar_request;
    struct addrinfo *ar_result;
    int rh_return;
    int rh_reserved[5];
};
extern int getaddrinfo_a(int mode, struct rh_gaicb *list[], int nitems, struct sigevent *sevp);
extern int gai_error(struct rh_gaicb *req);
extern int gai_cancel(struct rh_gaicb *req);

struct rh_resolution {
    struct rh_gaicb cb;
    struct addrinfo hints;
    char host[256];
    char port[8];
};

// Starts resolving host:port (TCP, any family); NULL when it cannot start.
static inline struct rh_resolution *rh_resolve_start(const char *host, int port) {
    struct rh_resolution *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    snprintf(r->host, sizeof(r->host), "%s", host);
    snprintf(r->port, sizeof(r->port), "%d", port);
    r->hints.ai_family = AF_UNSPEC;
    r->hints.ai_socktype = SOCK_STREAM;
    r->cb.ar_name = r->host;
    r->cb.ar_service = r->port;
    r->cb.ar_request = &r->hints;
    struct rh_gaicb *list[1] = { &r->cb };
    if (getaddrinfo_a(1 /* GAI_NOWAIT */, list, 1, NULL) != 0) { free(r); return NULL; }
    return r;
}
// EAI_INPROGRESS (-100) while running, 0 when done, another EAI_ code on failure.
static inline int rh_resolve_status(struct rh_resolution *r) { return gai_error(&r->cb); }
static inline struct addrinfo *rh_resolve_result(struct rh_resolution *r) { return r->cb.ar_result; }
// Frees a finished resolution; a running one is cancelled first, and when glibc
// cannot cancel it, 1 is returned and the caller must ask again later.
static inline int rh_resolve_free(struct rh_resolution *r) {
    if (gai_error(&r->cb) == -100 /* EAI_INPROGRESS */ && gai_cancel(&r->cb) == -102 /* EAI_NOTCANCELED */) {
        return 1;
    }
    if (r->cb.ar_result) freeaddrinfo(r->cb.ar_result);
    free(r);
    return 0;
}

// 1 when `host` is an IPv4 or IPv6 literal (no lookup needed).
static inline int rh_is_ip_literal(const char *host) {
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

// Permission bits of a file (-1 when it cannot be stat'ed).
static inline int rh_file_mode(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    return (int)(st.st_mode & 07777);
}

// "dev:ino" of an open file descriptor, as systemd writes it in $JOURNAL_STREAM.
static inline int rh_fd_dev_ino(int fd, unsigned long long *dev, unsigned long long *ino) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    *dev = (unsigned long long)st.st_dev;
    *ino = (unsigned long long)st.st_ino;
    return 0;
}
// open(2) is variadic: Swift cannot import it. A new file, exclusive, not
// following a symlink (AtomicFile's temporary), or a directory to fsync.
static inline int rh_open_new(const char *path, int mode) {
    return open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
}
static inline int rh_open_directory(const char *path) { return open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC); }

#endif
