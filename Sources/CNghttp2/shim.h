// nghttp2 for Swift: the public header is importable as is.
#ifndef REVERSEHTTP_CNGHTTP2_SHIM_H
#define REVERSEHTTP_CNGHTTP2_SHIM_H
#include <nghttp2/nghttp2.h>
#endif
