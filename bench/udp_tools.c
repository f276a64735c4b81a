/*
 * UDP echo server and load client for bench/udp_proxy.
 *
 * The benchmark compiles this file with `cc -O2` when a C compiler is
 * there, so that on a small machine the client and the echo server cost
 * the proxy as little CPU as possible; otherwise it uses the Python
 * versions of the same two programs (same arguments, same output).
 *
 *   udp_tools echo PORT
 *       Echo every datagram back to its sender on 127.0.0.1:PORT until
 *       the parent process goes away.
 *
 *   udp_tools load PORT CLIENTS WINDOW SECONDS SIZE WARMUP
 *       CLIENTS sockets, each a session of its own, keep WINDOW datagrams
 *       of SIZE bytes in flight to 127.0.0.1:PORT.  Every reply is checked
 *       to carry its socket's tag and sends the next datagram.  A socket
 *       that hears nothing for 200 ms sends its whole window again (the
 *       previous one is taken as lost).  Prints one JSON line: replies
 *       per second over SECONDS after WARMUP, datagrams sent, replies
 *       (including those of the 300 ms drain at the end), lost (sent less
 *       replies), misrouted (a reply without its socket's tag).
 *
 * Every loop is bounded in time; only loopback addresses are used.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_CLIENTS 4096
#define MAX_SIZE 65507
#define STALL_NS 200000000LL

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void loopback(struct sockaddr_in *sa, int port) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

static int echo_main(int port) {
    static char buf[MAX_SIZE + 1];
    struct sockaddr_in sa, peer;
    socklen_t len;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int size = 4 << 20;
    struct timeval tv = {1, 0};
    pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    loopback(&sa, port);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        perror("bind");
        return 2;
    }
    for (;;) {
        ssize_t n;
        len = sizeof peer;
        n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
        if (n < 0) {
            if (getppid() != parent)
                return 0;
            continue;
        }
        sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, len);
    }
}

struct client {
    int fd;
    uint32_t tag;
    int outstanding;
    int64_t last;
};

static int load_main(int port, int clients, int window, double seconds, int size,
                     double warmup) {
    static struct client cs[MAX_CLIENTS];
    static char out[MAX_SIZE], in[MAX_SIZE + 1];
    struct epoll_event events[256];
    struct sockaddr_in sa;
    long long sent = 0, received = 0, counted = 0, lost = 0, misrouted = 0;
    int64_t start, begin, end, stop;
    int ep = epoll_create1(0), i;
    if (clients < 1 || clients > MAX_CLIENTS || window < 1 || size < 4 || size > MAX_SIZE) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    memset(out, 'x', (size_t)size);
    loopback(&sa, port);
    start = now_ns();
    for (i = 0; i < clients; i++) {
        struct epoll_event ev;
        cs[i].fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        cs[i].tag = 0x5eed0000u + (uint32_t)i;
        cs[i].outstanding = 0;
        cs[i].last = start;
        if (cs[i].fd < 0 || connect(cs[i].fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            perror("socket");
            return 2;
        }
        ev.events = EPOLLIN;
        ev.data.u32 = (uint32_t)i;
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    for (i = 0; i < clients; i++) {
        int k;
        memcpy(out, &cs[i].tag, 4);
        for (k = 0; k < window; k++)
            if (send(cs[i].fd, out, (size_t)size, 0) == size) {
                sent++;
                cs[i].outstanding++;
            }
    }
    begin = start + (int64_t)(warmup * 1e9);
    end = begin + (int64_t)(seconds * 1e9);
    for (;;) {
        int64_t now = now_ns();
        int n;
        if (now >= end)
            break;
        n = epoll_wait(ep, events, 256, 10);
        now = now_ns();
        for (i = 0; i < n; i++) {
            struct client *c = &cs[events[i].data.u32];
            int reads;
            memcpy(out, &c->tag, 4);
            for (reads = 0; reads < 64; reads++) {
                ssize_t got = recv(c->fd, in, sizeof in, 0);
                uint32_t tag;
                if (got < 0)
                    break;
                received++;
                if (now >= begin)
                    counted++;
                c->outstanding--;
                c->last = now;
                memcpy(&tag, in, 4);
                if (got != size || tag != c->tag)
                    misrouted++;
                if (send(c->fd, out, (size_t)size, 0) == size) {
                    sent++;
                    c->outstanding++;
                }
            }
        }
        for (i = 0; i < clients; i++) {
            struct client *c = &cs[i];
            if (now - c->last > STALL_NS) {
                int k;
                c->outstanding = 0;
                c->last = now;
                memcpy(out, &c->tag, 4);
                for (k = 0; k < window; k++)
                    if (send(c->fd, out, (size_t)size, 0) == size) {
                        sent++;
                        c->outstanding++;
                    }
            }
        }
    }
    /* Drain what is still in flight, then count the rest as lost. */
    stop = now_ns() + 300000000LL;
    while (now_ns() < stop) {
        int n = epoll_wait(ep, events, 256, 20);
        for (i = 0; i < n; i++) {
            struct client *c = &cs[events[i].data.u32];
            while (recv(c->fd, in, sizeof in, 0) >= 0) {
                received++;
                c->outstanding--;
            }
        }
    }
    lost = sent - received;
    printf("{\"rate\": %.1f, \"sent\": %lld, \"received\": %lld, \"lost\": %lld, "
           "\"misrouted\": %lld}\n",
           counted / seconds, sent, received, lost, misrouted);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "echo") == 0)
        return echo_main(atoi(argv[2]));
    if (argc == 8 && strcmp(argv[1], "load") == 0)
        return load_main(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atof(argv[5]),
                         atoi(argv[6]), atof(argv[7]));
    fprintf(stderr, "usage: udp_tools echo PORT | load PORT CLIENTS WINDOW SECONDS SIZE WARMUP\n");
    return 2;
}
