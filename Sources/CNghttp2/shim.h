// nghttp2 for Swift: the public header, plus the allocator the sessions use.
#ifndef REVERSEHTTP_CNGHTTP2_SHIM_H
#define REVERSEHTTP_CNGHTTP2_SHIM_H
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

// nghttp2 gives every session a 16 KB frame buffer at creation and keeps it for
// the session's life; a gateway holding 10,000 mostly idle device connections
// would keep 160 MB of it resident. This allocator maps blocks of 8 KB and more
// directly (there are few of them, and they live long), so the pages a session
// never writes -- all but the first of an idle connection's frame buffer -- are
// never resident. Smaller blocks come from malloc. A 16-byte header before each
// block records its size and origin. If mmap fails (the map count limit), the
// block comes from malloc instead.
#define RH_NG_MAP_MIN (8 * 1024)

typedef struct {
    size_t size;
    size_t mapped;
} rh_ng_header;

static void *rh_ng_malloc(size_t size, void *user_data) {
    (void)user_data;
    if (size > SIZE_MAX - sizeof(rh_ng_header)) return NULL;
    size_t total = size + sizeof(rh_ng_header);
    rh_ng_header *h = NULL;
    size_t mapped = 0;
    if (size >= RH_NG_MAP_MIN) {
        void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
            h = (rh_ng_header *)p;
            mapped = 1;
        }
    }
    if (h == NULL) {
        h = (rh_ng_header *)malloc(total);
        if (h == NULL) return NULL;
    }
    h->size = size;
    h->mapped = mapped;
    return h + 1;
}

static void rh_ng_free(void *ptr, void *user_data) {
    (void)user_data;
    if (ptr == NULL) return;
    rh_ng_header *h = (rh_ng_header *)ptr - 1;
    if (h->mapped) {
        munmap(h, h->size + sizeof(rh_ng_header));
    } else {
        free(h);
    }
}

static void *rh_ng_calloc(size_t n, size_t size, void *user_data) {
    if (size != 0 && n > SIZE_MAX / size) return NULL;
    void *p = rh_ng_malloc(n * size, user_data);
    // Mapped pages are zero already, and stay unresident until written.
    if (p != NULL && !((rh_ng_header *)p - 1)->mapped) memset(p, 0, n * size);
    return p;
}

static void *rh_ng_realloc(void *ptr, size_t size, void *user_data) {
    if (ptr == NULL) return rh_ng_malloc(size, user_data);
    rh_ng_header *h = (rh_ng_header *)ptr - 1;
    if (!h->mapped && size < RH_NG_MAP_MIN) {
        rh_ng_header *n = (rh_ng_header *)realloc(h, size + sizeof(rh_ng_header));
        if (n == NULL) return NULL;
        n->size = size;
        return n + 1;
    }
    void *p = rh_ng_malloc(size, user_data);
    if (p == NULL) return NULL;
    memcpy(p, ptr, h->size < size ? h->size : size);
    rh_ng_free(ptr, user_data);
    return p;
}

static inline nghttp2_mem *rh_nghttp2_mem(void) {
    static nghttp2_mem mem = {NULL, rh_ng_malloc, rh_ng_free, rh_ng_calloc, rh_ng_realloc};
    return &mem;
}
#endif
