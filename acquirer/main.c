/* main.c - mockery-acquirer: the acquirer the payment service asks to move
 * money, with its own ledger and faults on demand (docs/acquirer.md)
 *
 * usage: mockery-acquirer --database-url URL [--port 8090] [--listen-host
 *        127.0.0.1] [--threads 512] [--pool-size 16] [--lease-ms 30000]
 *        [--ttl-s 86400] [--fault KIND:SELECTOR[:ms=N]]... [--quiet]
 * The database URL may come from MOCKERY_ACQUIRER_DATABASE_URL instead.
 * SIGTERM or SIGINT stops it; SIGUSR1 ends the fault holds under way.
 */
#define _POSIX_C_SOURCE 200809L
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "store_pg.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static void on_release(int sig)
{
    (void)sig;
    faults_release_holds();
}

static int int_arg(const char *name, const char *v, long lo, long hi, long *out)
{
    char *end = NULL;
    long n = strtol(v, &end, 10);
    if (!*v || *end || n < lo || n > hi) {
        fprintf(stderr, "mockery-acquirer: --%s must be an integer from %ld to %ld\n", name, lo,
                hi);
        return -1;
    }
    *out = n;
    return 0;
}

int main(int argc, char **argv)
{
    const char *url = getenv("MOCKERY_ACQUIRER_DATABASE_URL");
    const char *host = "127.0.0.1";
    long port = 8090, threads = 512, pool = 16, lease_ms = 30000, ttl_s = 86400;
    struct api api = {0};
    char err[512] = "";
    static const struct option opts[] = {{"database-url", required_argument, NULL, 'd'},
                                         {"port", required_argument, NULL, 'p'},
                                         {"listen-host", required_argument, NULL, 'H'},
                                         {"threads", required_argument, NULL, 't'},
                                         {"pool-size", required_argument, NULL, 'P'},
                                         {"lease-ms", required_argument, NULL, 'l'},
                                         {"ttl-s", required_argument, NULL, 'T'},
                                         {"fault", required_argument, NULL, 'f'},
                                         {"quiet", no_argument, NULL, 'q'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int rc = 0;
        switch (ch) {
        case 'd':
            url = optarg;
            break;
        case 'H':
            host = optarg;
            break;
        case 'p':
            rc = int_arg("port", optarg, 1, 65535, &port);
            break;
        case 't':
            rc = int_arg("threads", optarg, 1, 4096, &threads);
            break;
        case 'P':
            rc = int_arg("pool-size", optarg, 1, 256, &pool);
            break;
        case 'l':
            rc = int_arg("lease-ms", optarg, 100, 3600000, &lease_ms);
            break;
        case 'T':
            rc = int_arg("ttl-s", optarg, 1, 30L * 86400, &ttl_s);
            break;
        case 'f':
            rc = faults_add(&api.faults, optarg, err, sizeof err);
            if (rc != 0)
                fprintf(stderr, "mockery-acquirer: %s\n", err);
            break;
        case 'q':
            api.quiet = 1;
            break;
        case 'h':
            printf("usage: mockery-acquirer --database-url URL [--port 8090] [--listen-host "
                   "127.0.0.1] [--threads 512] [--pool-size 16] [--lease-ms 30000] [--ttl-s "
                   "86400] [--fault KIND:SELECTOR[:ms=N]]... [--quiet]\n"
                   "  KIND: latency, hold, 500, close, 503; SELECTOR: rate=R or prefix=P\n");
            return 0;
        default:
            return 2;
        }
        if (rc != 0)
            return 2;
    }
    if (optind < argc || !url || !*url) {
        fprintf(stderr, "mockery-acquirer: %s\n",
                optind < argc ? "unexpected argument"
                              : "--database-url (or MOCKERY_ACQUIRER_DATABASE_URL) is required");
        return 2;
    }
    struct store_pg_options po = {.database_url = url,
                                  .pool_size = (int)pool,
                                  .connect_timeout_s = 5,
                                  .acquire_timeout_ms = 5000,
                                  .application_name = "mockery-acquirer"};
    api.store = store_pg_new(&po, err, sizeof err);
    if (!api.store) {
        fprintf(stderr, "mockery-acquirer: the database: %s\n", err);
        return 1;
    }
    api.lease_ms = lease_ms;
    api.ttl_ms = ttl_s * 1000;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_release;
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct mg_context *ctx = api_start(&api, host, (int)port, (int)threads, err, sizeof err);
    if (!ctx) {
        fprintf(stderr, "mockery-acquirer: cannot listen on %s:%ld: %s\n", host, port, err);
        store_free(api.store);
        return 1;
    }
    fprintf(stderr, "mockery-acquirer: listening on %s:%ld (%d fault rules)\n", host, port,
            api.faults.n);
    sigset_t none;
    sigemptyset(&none);
    while (!stop)
        sigsuspend(&none);
    fprintf(stderr, "mockery-acquirer: stopping\n");
    api_stop(ctx);
    store_free(api.store);
    return 0;
}
