/* config.h - server configuration from flags and environment
 *
 * Every flag also reads an environment variable (PORT, DATABASE_URL, and
 * MOCKERY_<FLAG> otherwise); flags win over the environment.
 */
#ifndef MOCKERY_CONFIG_H
#define MOCKERY_CONFIG_H

#include <stddef.h>

#include "log.h"

enum store_kind { STORE_KIND_POSTGRES = 0, STORE_KIND_MEMORY };

/* The longest a statement waits for a pooled connection (the pool's, and
 * the dispatchers' leases count it: config_parse checks the retention
 * against them). */
#define POOL_ACQUIRE_TIMEOUT_MS 5000

struct config {
    int port; /* 0: any free port (tests) */
    char database_url[2048];
    enum store_kind store;
    int threads;
    int pool_size;
    int idempotency_ttl_s;
    int lease_s;
    int processing_delay_ms;
    int require_key;
    char api_keys[8192];
    enum log_level log_level;
    int db_wait_s; /* how long start-up waits for the database */
    int reaper_interval_ms;
    int reaper_batch;
    int event_retention_s;          /* how long events are kept */
    int webhook_allow_private;      /* endpoints on loopback and private addresses too (tests) */
    int webhook_max_endpoints;      /* a tenant's at most */
    int webhook_timeout_ms;         /* a delivery attempt's bound */
    int webhook_max_attempts;       /* then a delivery is failed (the first counts) */
    int webhook_backoff_ms;         /* before the first retry, doubled for each further one */
    int webhook_dispatchers;        /* threads sending deliveries; 0: none in this server */
    int recovery_interval_ms;       /* how often recovery looks for records left processing */
    int recovery_batch;             /* records recovered a pass at most */
    int replay_cache;               /* completed answers kept in memory; 0: none */
    int max_client_connections;     /* open connections per client address; 0: no limit */
    int rate_limit;                 /* requests a second per tenant; 0: no limit */
    int unauthenticated_rate_limit; /* requests without a valid API key a second per
                                     * client address; 0: no limit */
    int unnamed_statements;         /* no prepared statements (behind pgbouncer) */
    char acquirer_url[512];         /* the acquirer's base URL; empty: the in-process simulator */
    int acquirer_timeout_ms;        /* an ask's bound, below the lease */
    /* Not a flag: tests listen on 127.0.0.1 only. */
    char listen_host[64]; /* empty: every interface */
};

enum config_status {
    CONFIG_OK = 0,
    CONFIG_HELP, /* --help: print config_usage() and exit 0 */
    CONFIG_INVALID,
};

/* The defaults. */
void config_defaults(struct config *c);

/* Reads the environment, then argv (argv[0] is the program). On
 * CONFIG_INVALID err holds one line naming the flag and what it takes. */
enum config_status config_parse(struct config *c, int argc, char **argv, char *err, size_t errlen);

/* The --help text. */
const char *config_usage(void);

#endif
