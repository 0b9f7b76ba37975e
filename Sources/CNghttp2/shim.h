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

// One session's allocator (rh_ng_session_memory_new): the functions below, plus
// a note of the session's frame buffer, so that an idle connection can give that
// buffer's pages back (rh_ng_release_frame_pages). The frame buffer is the block of
// exactly RH_NG_FRAMEBUF bytes nghttp2 allocates while creating a session (checked
// for nghttp2 1.52; with another size nothing is noted and nothing released). Its
// bytes are dead between two nghttp2_session_mem_send calls: a frame is
// serialized afresh each time and never read back once returned. Given back with
// MADV_DONTNEED, the pages are zero-filled when next written; the block's size and
// origin are kept here, since its rh_ng_header is among the pages given back.
#define RH_NG_FRAMEBUF (9 + 1 + 16384)  // frame header, pad length, largest payload

typedef struct {
    nghttp2_mem mem;
    void *frame;
    size_t creating;
} rh_ng_session_memory;

static void *rh_ng_malloc(size_t size, void *user_data) {
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
    rh_ng_session_memory *m = (rh_ng_session_memory *)user_data;
    if (m != NULL && m->creating && m->frame == NULL && mapped && size == RH_NG_FRAMEBUF) m->frame = h + 1;
    return h + 1;
}

static void rh_ng_free(void *ptr, void *user_data) {
    if (ptr == NULL) return;
    rh_ng_header *h = (rh_ng_header *)ptr - 1;
    rh_ng_session_memory *m = (rh_ng_session_memory *)user_data;
    if (m != NULL && ptr == m->frame) {  // its header may have been given back
        m->frame = NULL;
        munmap(h, RH_NG_FRAMEBUF + sizeof(rh_ng_header));
        return;
    }
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
    rh_ng_session_memory *m = (rh_ng_session_memory *)user_data;
    if (m != NULL && ptr == m->frame) {
        h->size = RH_NG_FRAMEBUF;  // rewritten: the page may have been given back
        h->mapped = 1;
    }
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

static inline rh_ng_session_memory *rh_ng_session_memory_new(void) {
    rh_ng_session_memory *m = (rh_ng_session_memory *)calloc(1, sizeof(rh_ng_session_memory));
    if (m == NULL) return NULL;
    m->mem.mem_user_data = m;
    m->mem.malloc = rh_ng_malloc;
    m->mem.free = rh_ng_free;
    m->mem.calloc = rh_ng_calloc;
    m->mem.realloc = rh_ng_realloc;
    m->creating = 1;
    return m;
}
// The session is created: no later block is its frame buffer.
static inline void rh_ng_session_memory_created(rh_ng_session_memory *m) { m->creating = 0; }
// Gives the frame buffer's pages back. Call only between nghttp2 calls.
static inline void rh_ng_release_frame_pages(rh_ng_session_memory *m) {
    if (m->frame != NULL) madvise((rh_ng_header *)m->frame - 1, RH_NG_FRAMEBUF + sizeof(rh_ng_header), MADV_DONTNEED);
}

#endif
