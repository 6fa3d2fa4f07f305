#ifndef REGMIRROR_TEST_PEER_H
#define REGMIRROR_TEST_PEER_H
/*
 * The socket harness of the unit tests that talk to a peer: loopback sockets (listen,
 * connect, send everything), and test/unit/peer.py as a child process (the HTTP peer of the
 * httpc and upstream tests: it prints "PORTS <p1> <p2>" and serves until its stdin closes, so
 * it dies with the test). Included by the test files only; every function is static inline.
 *
 * The functions that assert (cmocka) are for the test's main thread; peer_listen,
 * peer_send_all and peer_free_port report failure instead and are safe on any thread.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

/* A listening socket on 127.0.0.1 at a free port (*port); -1 on failure. */
static inline int peer_listen(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    int one = 1;
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

/* A loopback port free a moment ago (for a server the test configures by address); 0 when
 * none could be had. */
static inline int peer_free_port(void)
{
    int port = 0;
    int fd = peer_listen(&port);
    if (fd < 0)
        return 0;
    close(fd);
    return port;
}

/* Sends all of data; false when the peer went away. */
static inline bool peer_send_all(int fd, const void *data, size_t len)
{
    const char *c = data;
    while (len > 0) {
        ssize_t k = send(fd, c, len, MSG_NOSIGNAL);
        if (k <= 0)
            return false;
        c += k;
        len -= (size_t)k;
    }
    return true;
}

/* A connection to 127.0.0.1:port, with TCP_NODELAY and reads that give up after 5 s. */
static inline int peer_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

/* ---- test/unit/peer.py ---- */

static pid_t peer_pid;
static int peer_stdin = -1;
static int peer_port;

/* cmocka group setup: starts peer.py ($REGMIRROR_PEER overrides the path) and reads its
 * first port into peer_port. */
static inline int peer_start(void **state)
{
    int in[2], out[2];
    const char *script = getenv("REGMIRROR_PEER");
    if (!script)
        script = "test/unit/peer.py";
    if (pipe(in) != 0 || pipe(out) != 0)
        return -1;
    peer_pid = fork();
    if (peer_pid < 0)
        return -1;
    if (peer_pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[1]);
        close(out[0]);
        execl("/usr/bin/python3", "python3", script, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    peer_stdin = in[1];
    char line[128];
    size_t n = 0;
    while (n < sizeof(line) - 1) {
        ssize_t k = read(out[0], line + n, 1);
        if (k <= 0 || line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    close(out[0]);
    int p2;
    return sscanf(line, "PORTS %d %d", &peer_port, &p2) == 2 ? 0 : -1;
}

/* cmocka group teardown: closing its stdin ends peer.py. */
static inline int peer_stop(void **state)
{
    if (peer_stdin >= 0)
        close(peer_stdin);
    if (peer_pid > 0)
        waitpid(peer_pid, NULL, 0);
    return 0;
}

/* Blocking GET of path (/_stats, /_reset) from peer.py, its JSON body (the caller decrefs). */
static inline json_t *peer_get(const char *path)
{
    int fd = peer_connect(peer_port);
    char req[128];
    snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n\r\n", path);
    assert_true(peer_send_all(fd, req, strlen(req)));
    static char buf[65536];
    size_t n = 0;
    ssize_t k;
    while (n < sizeof(buf) - 1 && (k = read(fd, buf + n, sizeof(buf) - 1 - n)) > 0)
        n += (size_t)k;
    buf[n] = '\0';
    close(fd);
    const char *body = strstr(buf, "\r\n\r\n");
    assert_non_null(body);
    json_t *j = json_loads(body + 4, 0, NULL);
    assert_non_null(j);
    return j;
}

#endif
