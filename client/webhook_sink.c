/* webhook_sink.c - mockery-webhook-sink: a webhook endpoint for benchmarks
 * (bench/run.py) and manual trials
 *
 *   mockery-webhook-sink --listen 127.0.0.1:9099 --secret whsec_...
 *
 * Answers every delivery signed with the secret 200 (webhook_receiver.h),
 * others 401; GET / answers the counts as JSON. Runs until SIGTERM or
 * SIGINT, then prints the counts as one JSON line.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "webhook_receiver.h"

int main(int argc, char **argv)
{
    const char *listen = NULL, *secret = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--listen") == 0)
            listen = argv[i + 1];
        else if (strcmp(argv[i], "--secret") == 0)
            secret = argv[i + 1];
        else
            listen = NULL, i = argc;
    }
    if (!listen || !secret || argc % 2 == 0) {
        fputs("usage: mockery-webhook-sink --listen HOST:PORT --secret WHSEC\n", stderr);
        return 2;
    }
    /* The signals wait here, blocked in every thread civetweb starts. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    char err[256];
    struct receiver *r = receiver_start(listen, err, sizeof err);
    if (!r) {
        fprintf(stderr, "mockery-webhook-sink: %s\n", err);
        return 1;
    }
    receiver_set_secret(r, secret);
    int sig;
    sigwait(&stop, &sig);
    struct receiver_counts n;
    receiver_counts(r, &n);
    receiver_stop(r);
    printf("{\"deliveries\":%d,\"verified\":%d,\"duplicates\":%d,\"events\":%d}\n", n.deliveries,
           n.verified, n.duplicates, n.events);
    return 0;
}
