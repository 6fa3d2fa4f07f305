#ifndef REGMIRROR_TLS_H
#define REGMIRROR_TLS_H
/*
 * tls: HTTPS listeners for http.tls.{certificate,key,clientcas,clientauth,minimumtls,
 * ciphersuites}, with OpenSSL through libevent's bufferevent_openssl.
 *
 * Each accepted socket gets TCP_NODELAY (without it every TLS response stalls ~40 ms behind
 * Nagle) and an SSL in accepting state. The handshake runs here, bounded by a timeout; only a
 * connection that completed it is handed to the HTTP server (http_server_adopt), so the HTTP
 * layer never sees handshake events. Failed handshakes are logged at info with the peer and
 * OpenSSL's reason.
 *
 * Config mapping (as registry:2, which uses Go's crypto/tls):
 *   certificate  PEM certificate, optionally followed by its chain
 *   key          PEM private key (unencrypted)
 *   clientcas    PEM CA files; when set, clients must present a certificate they signed
 *                (clientauth chooses a weaker mode: request-client-cert,
 *                require-any-client-cert, verify-client-cert-if-given)
 *   minimumtls   tls1.0 .. tls1.3 (default tls1.2)
 *   ciphersuites Go's names, mapped to OpenSSL's; TLS 1.2 suites restrict TLS <= 1.2, TLS 1.3
 *                suites restrict TLS 1.3 (Go leaves 1.3 alone; naming one here means it)
 *
 * The tls_server borrows http (the HTTP server it feeds) and base: both must outlive it.
 */
#include <event2/event.h>

#include "config.h"

struct http_server;
struct tls_server;

/* Builds the TLS context from cfg->http.tls. NULL on error (logged, naming the key). */
struct tls_server *tls_server_new(struct event_base *base, const struct config *cfg,
                                  struct http_server *http);
/* Listens on "host:port", ":port" or "[v6]:port". 0, or -1 (logged). */
int tls_server_listen(struct tls_server *t, const char *addr);
/* Listens on an already bound, listening socket (tests). Takes fd. 0 or -1. */
int tls_server_listen_fd(struct tls_server *t, int fd);
/* Closes the listeners and drops connections still in their handshake; frees t. */
void tls_server_free(struct tls_server *t);

/* The OpenSSL name of a Go cipher suite name, or NULL when unknown. */
const char *tls_cipher_openssl_name(const char *go_name);

#endif
