#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
/* TCP_NODELAY on connections to the port in $NODELAY_PORT (an experiment). */
static int (*real_connect)(int, const struct sockaddr *, socklen_t);
int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    if (!real_connect) real_connect = dlsym(RTLD_NEXT, "connect");
    const char *p = getenv("NODELAY_PORT");
    if (p && addr && addr->sa_family == AF_INET &&
        ntohs(((const struct sockaddr_in *)addr)->sin_port) == atoi(p)) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return real_connect(fd, addr, len);
}
