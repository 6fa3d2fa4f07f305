#include "tls.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "http.h"
#include "log.h"

#define TLS_MAX_LISTENERS 16
/* A client has this long to finish the handshake. */
#define TLS_HANDSHAKE_TIMEOUT_S 30
#define TLS_ACCEPT_RETRY_MS 200

/* A connection in its handshake: owned here until it is handed to the HTTP server. */
struct handshake {
    struct tls_server *t;
    struct handshake *prev, *next;
    struct bufferevent *bev;
    char remote[INET6_ADDRSTRLEN];
};

struct tls_server {
    struct event_base *base;
    struct http_server *http;
    SSL_CTX *ctx;
    struct evconnlistener *listeners[TLS_MAX_LISTENERS];
    int nlisteners;
    struct event *accept_retry;
    struct handshake *pending;
};

static const struct {
    const char *go, *openssl;
    bool tls13;
} cipher_map[] = {
    {"TLS_RSA_WITH_RC4_128_SHA", "RC4-SHA", false},
    {"TLS_RSA_WITH_3DES_EDE_CBC_SHA", "DES-CBC3-SHA", false},
    {"TLS_RSA_WITH_AES_128_CBC_SHA", "AES128-SHA", false},
    {"TLS_RSA_WITH_AES_256_CBC_SHA", "AES256-SHA", false},
    {"TLS_RSA_WITH_AES_128_CBC_SHA256", "AES128-SHA256", false},
    {"TLS_RSA_WITH_AES_128_GCM_SHA256", "AES128-GCM-SHA256", false},
    {"TLS_RSA_WITH_AES_256_GCM_SHA384", "AES256-GCM-SHA384", false},
    {"TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", "ECDHE-ECDSA-RC4-SHA", false},
    {"TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", "ECDHE-ECDSA-AES128-SHA", false},
    {"TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "ECDHE-ECDSA-AES256-SHA", false},
    {"TLS_ECDHE_RSA_WITH_RC4_128_SHA", "ECDHE-RSA-RC4-SHA", false},
    {"TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", "ECDHE-RSA-DES-CBC3-SHA", false},
    {"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "ECDHE-RSA-AES128-SHA", false},
    {"TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", "ECDHE-RSA-AES256-SHA", false},
    {"TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", "ECDHE-ECDSA-AES128-SHA256", false},
    {"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", "ECDHE-RSA-AES128-SHA256", false},
    {"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256", false},
    {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256", false},
    {"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384", false},
    {"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384", false},
    {"TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-CHACHA20-POLY1305", false},
    {"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305", false},
    {"TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256", true},
    {"TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384", true},
    {"TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256", true},
};

const char *tls_cipher_openssl_name(const char *go_name)
{
    for (size_t i = 0; i < sizeof(cipher_map) / sizeof(cipher_map[0]); i++)
        if (strcmp(cipher_map[i].go, go_name) == 0)
            return cipher_map[i].openssl;
    return NULL;
}

/* OpenSSL's last error as text ("unsupported protocol"), clearing the queue. */
static const char *ssl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    if (!e) {
        snprintf(buf, len, "%s", errno ? strerror(errno) : "unknown error");
    } else {
        const char *r = ERR_reason_error_string(e);
        if (r)
            snprintf(buf, len, "%s", r);
        else
            ERR_error_string_n(e, buf, len);
    }
    ERR_clear_error();
    return buf;
}

static int min_version(const char *s)
{
    if (!strcmp(s, "tls1.0"))
        return TLS1_VERSION;
    if (!strcmp(s, "tls1.1"))
        return TLS1_1_VERSION;
    if (!strcmp(s, "tls1.3"))
        return TLS1_3_VERSION;
    return TLS1_2_VERSION; /* "tls1.2" and the default; config validated the value */
}

/* Sets the cipher lists from Go names. 0, or -1 (logged). */
static int set_ciphers(SSL_CTX *ctx, const struct config *cfg)
{
    char l12[2048] = "", l13[512] = "", why[256];
    size_t n12 = 0, n13 = 0;
    for (size_t i = 0; i < cfg->http.tls.nciphersuites; i++) {
        const char *go = cfg->http.tls.ciphersuites[i];
        size_t k;
        for (k = 0; k < sizeof(cipher_map) / sizeof(cipher_map[0]); k++)
            if (!strcmp(cipher_map[k].go, go))
                break;
        if (k == sizeof(cipher_map) / sizeof(cipher_map[0])) {
            log_error("http.tls.ciphersuites: unknown cipher suite %s", go);
            return -1;
        }
        char *l = cipher_map[k].tls13 ? l13 : l12;
        size_t cap = cipher_map[k].tls13 ? sizeof(l13) : sizeof(l12);
        size_t *n = cipher_map[k].tls13 ? &n13 : &n12;
        size_t used = strlen(l);
        snprintf(l + used, cap - used, "%s%s", *n ? ":" : "", cipher_map[k].openssl);
        (*n)++;
    }
    if (n12 && SSL_CTX_set_cipher_list(ctx, l12) != 1) {
        log_error("http.tls.ciphersuites: none of the TLS 1.2 suites is available in this "
                  "OpenSSL (%s): %s",
                  l12, ssl_reason(why, sizeof(why)));
        return -1;
    }
    if (n13 && SSL_CTX_set_ciphersuites(ctx, l13) != 1) {
        log_error("http.tls.ciphersuites: cannot use %s: %s", l13, ssl_reason(why, sizeof(why)));
        return -1;
    }
    if (n12) {
        /* suites OpenSSL dropped (RC4, 3DES at the default security level): say which */
        STACK_OF(SSL_CIPHER) *have = SSL_CTX_get_ciphers(ctx);
        char *save = NULL;
        for (char *name = strtok_r(l12, ":", &save); name; name = strtok_r(NULL, ":", &save)) {
            bool found = false;
            for (int i = 0; have && i < sk_SSL_CIPHER_num(have); i++)
                if (!strcmp(SSL_CIPHER_get_name(sk_SSL_CIPHER_value(have, i)), name))
                    found = true;
            if (!found)
                log_warn("http.tls.ciphersuites: %s is not available in this OpenSSL; ignored",
                         name);
        }
    }
    return 0;
}

/* For the modes that ask for a client certificate without verifying it. */
static int accept_any_cert(int ok, X509_STORE_CTX *store)
{
    return 1;
}

/* Loads clientcas and sets the verification mode from clientauth. 0, or -1 (logged). */
static int set_client_auth(SSL_CTX *ctx, const struct config *cfg)
{
    char why[256];
    if (cfg->http.tls.nclientcas == 0) {
        if (cfg->http.tls.clientauth[0])
            log_warn("http.tls.clientauth: ignored without http.tls.clientcas");
        return 0;
    }
    STACK_OF(X509_NAME) *names = sk_X509_NAME_new_null();
    if (!names)
        return -1;
    for (size_t i = 0; i < cfg->http.tls.nclientcas; i++) {
        const char *f = cfg->http.tls.clientcas[i];
        if (SSL_CTX_load_verify_locations(ctx, f, NULL) != 1 ||
            SSL_add_file_cert_subjects_to_stack(names, f) != 1) {
            log_error("http.tls.clientcas[%zu]: cannot load CA certificates from %s: %s", i, f,
                      ssl_reason(why, sizeof(why)));
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            return -1;
        }
    }
    SSL_CTX_set_client_CA_list(ctx, names); /* takes names */
    const char *mode = cfg->http.tls.clientauth;
    if (!strcmp(mode, "request-client-cert") || !strcmp(mode, "require-any-client-cert")) {
        /* a certificate is asked for (or required) but not verified, as Go's modes */
        int m = SSL_VERIFY_PEER;
        if (!strcmp(mode, "require-any-client-cert"))
            m |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(ctx, m, accept_any_cert);
    } else if (!strcmp(mode, "verify-client-cert-if-given")) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        /* "" and require-and-verify-client-cert: registry:2's behaviour with clientcas */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    return 0;
}

static SSL_CTX *make_ctx(const struct config *cfg)
{
    char why[256];
    const char *cert = cfg->http.tls.certificate, *key = cfg->http.tls.key;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        log_error("tls: cannot create a TLS context: %s", ssl_reason(why, sizeof(why)));
        return NULL;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        log_error("http.tls.certificate: cannot load %s: %s", cert, ssl_reason(why, sizeof(why)));
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
            log_error("http.tls.key: %s does not match the certificate %s", key, cert);
        else
            log_error("http.tls.key: cannot load %s: %s", key, ssl_reason(why, sizeof(why)));
        ERR_clear_error();
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        log_error("http.tls.key: %s does not match the certificate %s: %s", key, cert,
                  ssl_reason(why, sizeof(why)));
        goto fail;
    }
    int minv = min_version(cfg->http.tls.minimumtls);
    if (SSL_CTX_set_min_proto_version(ctx, minv) != 1) {
        log_error("http.tls.minimumtls: %s is not available: %s", cfg->http.tls.minimumtls,
                  ssl_reason(why, sizeof(why)));
        goto fail;
    }
    if (minv < TLS1_2_VERSION)
        /* OpenSSL 3's default security level refuses TLS 1.0/1.1 handshakes outright */
        SSL_CTX_set_security_level(ctx, 0);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    /* idle keep-alive connections hold no TLS buffers */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (set_ciphers(ctx, cfg) != 0 || set_client_auth(ctx, cfg) != 0)
        goto fail;
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* ---- handshakes ---- */

static void handshake_free(struct handshake *h, bool free_bev)
{
    struct tls_server *t = h->t;
    if (h->prev)
        h->prev->next = h->next;
    else
        t->pending = h->next;
    if (h->next)
        h->next->prev = h->prev;
    if (free_bev)
        bufferevent_free(h->bev);
    free(h);
}

static void handshake_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct handshake *h = arg;
    struct tls_server *t = h->t;
    if (what & BEV_EVENT_CONNECTED) {
        char remote[INET6_ADDRSTRLEN];
        memcpy(remote, h->remote, sizeof(remote));
        bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
        bufferevent_set_timeouts(bev, NULL, NULL);
        handshake_free(h, false);
        /* the HTTP server takes bev, and frees it itself on error */
        if (http_server_adopt(t->http, bev, remote) != 0)
            log_warn("tls: cannot set up a connection from %s", remote);
        return;
    }
    if (log_enabled(LOG_INFO)) {
        char why[256];
        unsigned long e = bufferevent_get_openssl_error(bev);
        if (e) {
            const char *r = ERR_reason_error_string(e);
            snprintf(why, sizeof(why), "%s", r ? r : "TLS error");
        } else if (what & BEV_EVENT_TIMEOUT) {
            snprintf(why, sizeof(why), "timed out after %d s", TLS_HANDSHAKE_TIMEOUT_S);
        } else if (what & BEV_EVENT_EOF) {
            snprintf(why, sizeof(why), "closed by the client");
        } else {
            int err = EVUTIL_SOCKET_ERROR();
            snprintf(why, sizeof(why), "%s", err ? evutil_socket_error_to_string(err) : "error");
        }
        const char *fields[] = {"remote", h->remote, "reason", why, NULL};
        log_kv(LOG_INFO, fields, "tls: handshake failed");
    }
    /* drain the rest of libevent's error queue for this connection */
    while (bufferevent_get_openssl_error(bev))
        ;
    handshake_free(h, true);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    struct tls_server *t = arg;
    char remote[INET6_ADDRSTRLEN];
    http_peer_text(sa, remote, sizeof(remote));
    /* Nagle would hold every TLS record of a small response back ~40 ms. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct handshake *h = calloc(1, sizeof(*h));
    SSL *ssl = SSL_new(t->ctx);
    if (!h || !ssl) {
        free(h);
        SSL_free(ssl);
        evutil_closesocket(fd);
        log_warn("tls: out of memory accepting %s", remote);
        return;
    }
    /* with CLOSE_ON_FREE the bufferevent frees ssl and closes fd, also when it fails here */
    h->bev = bufferevent_openssl_socket_new(t->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                            BEV_OPT_CLOSE_ON_FREE);
    if (!h->bev) {
        free(h);
        log_warn("tls: cannot set up a connection from %s", remote);
        return;
    }
    /* clients that close without close_notify are ordinary: an EOF, not an error */
    bufferevent_openssl_set_allow_dirty_shutdown(h->bev, 1);
    h->t = t;
    memcpy(h->remote, remote, sizeof(h->remote));
    h->next = t->pending;
    if (t->pending)
        t->pending->prev = h;
    t->pending = h;
    struct timeval tv = {.tv_sec = TLS_HANDSHAKE_TIMEOUT_S};
    bufferevent_set_timeouts(h->bev, &tv, &tv);
    bufferevent_setcb(h->bev, NULL, NULL, handshake_event_cb, h);
    bufferevent_enable(h->bev, EV_READ | EV_WRITE);
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tls_server *t = arg;
    for (int i = 0; i < t->nlisteners; i++)
        evconnlistener_enable(t->listeners[i]);
}

/* accept() failing (EMFILE, ENFILE) would spin the loop: pause accepting for a moment. */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct tls_server *t = arg;
    int err = EVUTIL_SOCKET_ERROR();
    log_warn("tls: accept: %s", evutil_socket_error_to_string(err));
    for (int i = 0; i < t->nlisteners; i++)
        evconnlistener_disable(t->listeners[i]);
    struct timeval tv = {.tv_usec = TLS_ACCEPT_RETRY_MS * 1000};
    evtimer_add(t->accept_retry, &tv);
}

static int add_listener(struct tls_server *t, struct evconnlistener *l)
{
    if (!l)
        return -1;
    if (t->nlisteners == TLS_MAX_LISTENERS) {
        evconnlistener_free(l);
        errno = EMFILE;
        return -1;
    }
    evconnlistener_set_error_cb(l, accept_error_cb);
    t->listeners[t->nlisteners++] = l;
    return 0;
}

/* ---- the server ---- */

struct tls_server *tls_server_new(struct event_base *base, const struct config *cfg,
                                  struct http_server *http)
{
    if (!cfg->http.tls.certificate[0]) {
        if (cfg->http.tls.letsencrypt.cachefile[0])
            log_error("http.tls.letsencrypt: not supported; set http.tls.certificate and "
                      "http.tls.key");
        else
            log_error("http.tls.certificate: required for TLS");
        return NULL;
    }
    struct tls_server *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->base = base;
    t->http = http;
    t->accept_retry = evtimer_new(base, accept_retry_cb, t);
    t->ctx = make_ctx(cfg);
    if (!t->accept_retry || !t->ctx) {
        tls_server_free(t);
        return NULL;
    }
    return t;
}

/* The listening address as in http_server_listen (http_listen_bind parses and binds it). */
int tls_server_listen(struct tls_server *t, const char *addr)
{
    return add_listener(t, http_listen_bind(t->base, addr, accept_cb, t));
}

int tls_server_listen_fd(struct tls_server *t, int fd)
{
    if (evutil_make_socket_nonblocking(fd) < 0) {
        close(fd);
        return -1;
    }
    struct evconnlistener *l = evconnlistener_new(
        t->base, accept_cb, t, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
    if (!l) {
        close(fd);
        return -1;
    }
    return add_listener(t, l);
}

void tls_server_free(struct tls_server *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->nlisteners; i++)
        evconnlistener_free(t->listeners[i]);
    for (struct handshake *h = t->pending, *next; h; h = next) {
        next = h->next;
        handshake_free(h, true);
    }
    if (t->accept_retry)
        event_free(t->accept_retry);
    SSL_CTX_free(t->ctx); /* connections already adopted hold their own references */
    free(t);
}
