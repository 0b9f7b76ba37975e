// OpenSSL 3 for Swift: the headers, plus static inline wrappers for the
// function-like macros Swift cannot import.
#ifndef REVERSEHTTP_COPENSSL_SHIM_H
#define REVERSEHTTP_COPENSSL_SHIM_H
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

static inline long rh_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return SSL_CTX_set_min_proto_version(ctx, version);
}
static inline long rh_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
static inline long rh_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}
static inline long rh_BIO_pending(BIO *bio) { return (long)BIO_ctrl_pending(bio); }
static inline int rh_TLS1_2_VERSION(void) { return TLS1_2_VERSION; }
static inline int rh_TLS1_3_VERSION(void) { return TLS1_3_VERSION; }
static inline long rh_SSL_MODE_ENABLE_PARTIAL_WRITE(void) { return SSL_MODE_ENABLE_PARTIAL_WRITE; }
static inline long rh_SSL_MODE_RELEASE_BUFFERS(void) { return SSL_MODE_RELEASE_BUFFERS; }
static inline void rh_BIO_set_mem_eof_return(BIO *bio, int v) { BIO_set_mem_eof_return(bio, v); }
// Bytes a memory BIO has allocated (it keeps its largest size until freed).
static inline size_t rh_BIO_mem_capacity(BIO *bio) {
    BUF_MEM *m = NULL;
    BIO_get_mem_ptr(bio, &m);
    return m ? m->max : 0;
}
static inline void rh_OPENSSL_free(void *p) { OPENSSL_free(p); }
static inline void rh_sk_X509_NAME_pop_free(STACK_OF(X509_NAME) *sk) { sk_X509_NAME_pop_free(sk, X509_NAME_free); }
// Certificate revocation lists: the revoked entries of an X509_CRL.
static inline int rh_sk_X509_REVOKED_num(const STACK_OF(X509_REVOKED) *sk) { return sk_X509_REVOKED_num(sk); }
static inline X509_REVOKED *rh_sk_X509_REVOKED_value(const STACK_OF(X509_REVOKED) *sk, int i) {
    return sk_X509_REVOKED_value(sk, i);
}
// Subject alternative names: the DNS name of entry i of a GENERAL_NAMES, or NULL.
static inline int rh_sk_GENERAL_NAME_num(const GENERAL_NAMES *names) { return sk_GENERAL_NAME_num(names); }
static inline const ASN1_IA5STRING *rh_GENERAL_NAMES_dns(const GENERAL_NAMES *names, int i) {
    const GENERAL_NAME *name = sk_GENERAL_NAME_value(names, i);
    return name && name->type == GEN_DNS ? name->d.dNSName : NULL;
}
static inline void rh_GENERAL_NAMES_free(GENERAL_NAMES *names) { GENERAL_NAMES_free(names); }
// PKCS#7 certs-only (RFC 7030 4.1.3, RFC 5272 degenerate SignedData): no signers,
// encapsulated content id-data without content, as `openssl crl2pkcs7 -nocrl` makes it.
static inline PKCS7 *rh_PKCS7_certs_only_new(void) {
    PKCS7 *p7 = PKCS7_new();
    if (p7 == NULL) return NULL;
    if (!PKCS7_set_type(p7, NID_pkcs7_signed) || p7->d.sign == NULL || p7->d.sign->contents == NULL) {
        PKCS7_free(p7);
        return NULL;
    }
    p7->d.sign->contents->type = OBJ_nid2obj(NID_pkcs7_data);
    return p7;
}
// The certificates of a SignedData (NULL when p7 is another type or has none).
static inline STACK_OF(X509) *rh_PKCS7_signed_certs(PKCS7 *p7) {
    if (p7 == NULL || p7->type == NULL || OBJ_obj2nid(p7->type) != NID_pkcs7_signed || p7->d.sign == NULL) return NULL;
    return p7->d.sign->cert;
}
// What the device agent reads of an EST answer, in C for the Embedded agent's
// size: the certificates of a certs-only PKCS#7 (DER: one SignedData, 1 to 16
// certificates, nothing after it) as PEM, at most `max`, self-signed ones left
// out when `drop_self_signed`, appended to the memory BIO `out`. Returns how many
// were written, -1 when `der` is not such a PKCS#7 or a write fails.
static inline int rh_pkcs7_certs_to_pem(const unsigned char *der, long len, int max, int drop_self_signed, BIO *out) {
    const unsigned char *p = der;
    PKCS7 *p7 = d2i_PKCS7(NULL, &p, len);
    STACK_OF(X509) *certs = rh_PKCS7_signed_certs(p7);
    int n = certs != NULL ? sk_X509_num(certs) : 0, written = 0;
    if (p7 == NULL || p != der + len || n < 1 || n > 16) written = -1;
    for (int i = 0; written >= 0 && i < n && written < max; i++) {
        X509 *x = sk_X509_value(certs, i);
        if (drop_self_signed && X509_check_issued(x, x) == X509_V_OK) continue;
        written = PEM_write_bio_X509(out, x) == 1 ? written + 1 : -1;
    }
    PKCS7_free(p7);
    ERR_clear_error();
    return written;
}
// A new EC P-256 key (EVP_EC_gen is a variadic macro: Swift cannot call it).
static inline EVP_PKEY *rh_ec_p256_keygen(void) { return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"); }
static inline int rh_sk_X509_num(const STACK_OF(X509) *sk) { return sk_X509_num(sk); }
static inline X509 *rh_sk_X509_value(const STACK_OF(X509) *sk, int i) { return sk_X509_value(sk, i); }
#endif
