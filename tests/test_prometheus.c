/* test_prometheus.c - a real Prometheus (Debian 12's prometheus package)
 * scraping the real mockery-server process: promtool check metrics accepts
 * the real /metrics text, the target is up, a PromQL query over the HTTP API
 * sees the request counter grow after payments, the shipped alerting rules
 * (prometheus/alerts.yml) load and evaluate without error, and
 * MockeryServerDown goes pending once the server is stopped. */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

extern char **environ;

#define PROMETHEUS "/usr/bin/prometheus"
#define PROMTOOL "/usr/bin/promtool"

static struct test_server srv;
static char dir[64];
static int prom_port;
static pid_t prom_pid;

/* A port no one listens on now (the kernel's choice for port 0). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void start_prometheus(void)
{
    cr_assert_eq(access(PROMETHEUS, X_OK), 0,
                 PROMETHEUS " is missing: install Debian's prometheus package (scripts/dev deps)");
    snprintf(dir, sizeof dir, "/tmp/mockery-prom.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    char path[128], arg_cfg[160], arg_db[160], arg_listen[64];
    snprintf(path, sizeof path, "%s/prometheus.yml", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    /* The shipped rules, against this server, scraped every second. */
    fprintf(f,
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "rule_files:\n  - %s/prometheus/alerts.yml\n"
            "scrape_configs:\n  - job_name: mockery\n    static_configs:\n"
            "      - targets: [\"%s\"]\n",
            MOCKERY_SOURCE_DIR, srv.base + strlen("http://"));
    fclose(f);
    prom_port = free_port();
    snprintf(arg_cfg, sizeof arg_cfg, "--config.file=%s", path);
    snprintf(arg_db, sizeof arg_db, "--storage.tsdb.path=%s/data", dir);
    snprintf(arg_listen, sizeof arg_listen, "--web.listen-address=127.0.0.1:%d", prom_port);
    char *const argv[] = {"prometheus", arg_cfg, arg_db, arg_listen, "--log.level=warn", NULL};
    snprintf(path, sizeof path, "%s/prometheus.log", dir);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd, 1);
    posix_spawn_file_actions_adddup2(&fa, fd, 2);
    cr_assert_eq(posix_spawn(&prom_pid, PROMETHEUS, &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(fd);
}

static void setup(void)
{
    struct config c;
    test_config(&c, STORE_KIND_POSTGRES);
    memset(&srv, 0, sizeof srv);
    test_server_spawn(&srv, &c, MOCKERY_SERVER_BIN);
    start_prometheus();
}

static void teardown(void)
{
    if (prom_pid > 0) {
        kill(prom_pid, SIGTERM);
        waitpid(prom_pid, NULL, 0);
        prom_pid = 0;
    }
    if (srv.pid > 0)
        test_server_stop(&srv);
    if (dir[0]) {
        char cmd[96];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        cr_expect_eq(system(cmd), 0);
    }
}

/* GET a path of the Prometheus HTTP API; its "data" member (or NULL until
 * Prometheus answers). The caller deletes *root. */
static cJSON *prom_get(const char *path_and_query, cJSON **root)
{
    char url[1024];
    struct test_response r;
    *root = NULL;
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", prom_port, path_and_query);
    httpc_request("GET", url, NULL, NULL, 0, 5000, &r);
    if (r.status == 200)
        *root = cJSON_Parse(r.body);
    test_response_free(&r);
    cJSON *status = cJSON_GetObjectItemCaseSensitive(*root, "status");
    if (!cJSON_IsString(status) || strcmp(status->valuestring, "success") != 0)
        return NULL;
    return cJSON_GetObjectItemCaseSensitive(*root, "data");
}

/* The value of an instant PromQL query with one result; -1 when it has none. */
static double promql(const char *expr)
{
    char q[800];
    char *esc = curl_easy_escape(NULL, expr, 0);
    snprintf(q, sizeof q, "/api/v1/query?query=%s", esc);
    curl_free(esc);
    cJSON *root;
    cJSON *data = prom_get(q, &root);
    cJSON *result = cJSON_GetObjectItemCaseSensitive(data, "result");
    double v = -1;
    if (cJSON_GetArraySize(result) == 1) {
        cJSON *value = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(result, 0), "value");
        cJSON *text = cJSON_GetArrayItem(value, 1);
        if (cJSON_IsString(text))
            v = strtod(text->valuestring, NULL);
    }
    cJSON_Delete(root);
    return v;
}

/* Polls expr every 200 ms for up to seconds until it equals want. */
static double promql_until(const char *expr, double want, int seconds)
{
    double v = -1;
    for (int i = 0; i < seconds * 5; i++) {
        v = promql(expr);
        if (v == want)
            break;
        test_sleep_ms(200);
    }
    return v;
}

Test(prometheus, promtool_accepts_the_real_metrics_text, .init = setup, .fini = teardown,
     .timeout = 60)
{
    cr_assert_eq(access(PROMTOOL, X_OK), 0, PROMTOOL " is missing: install Debian's prometheus");
    /* Every family, after a payment too (the histogram and outcome series). */
    test_pay(&srv, "1", NULL, 0);
    char *text = test_scrape(&srv);
    char path[128], cmd[400];
    snprintf(path, sizeof path, "%s/promtool.out", dir);
    snprintf(cmd, sizeof cmd, PROMTOOL " check metrics >'%s' 2>&1", path);
    FILE *p = popen(cmd, "w");
    cr_assert_not_null(p);
    fputs(text, p);
    int status = pclose(p);
    free(text);
    char out[4096] = "";
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = '\0';
    fclose(f);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "promtool check metrics failed:\n%s",
              out);
    cr_assert_str_empty(out, "promtool check metrics found problems:\n%s", out);
}

Test(prometheus, scrapes_the_server_and_sees_payments, .init = setup, .fini = teardown,
     .timeout = 120)
{
    double up = promql_until("up{job=\"mockery\"}", 1, 30);
    cr_assert_eq(up, 1, "the server's target is not up in Prometheus (up = %g)", up);

    const char *posts = "sum(mockery_http_requests_total{route=\"/api/v1/payments\","
                        "method=\"POST\",status=\"201\"})";
    double before = promql(posts);
    if (before < 0) /* no payment yet: no series */
        before = 0;
    for (int i = 0; i < 5; i++)
        test_pay(&srv, "2", NULL, 0);
    double after = promql_until(posts, before + 5, 20);
    cr_assert_eq(after, before + 5, "Prometheus saw %g payments' POSTs, then %g (want +5)", before,
                 after);
    double completed = promql_until("sum(mockery_payments_total{status=\"completed\"})", 5, 20);
    cr_assert_eq(completed, 5, "mockery_payments_total{status=\"completed\"} = %g", completed);
}

Test(prometheus, the_shipped_rules_evaluate_and_server_down_goes_pending, .init = setup,
     .fini = teardown, .timeout = 120)
{
    cr_assert_eq(promql_until("up{job=\"mockery\"}", 1, 30), 1, "the target is not up");
    /* Every rule of alerts.yml loaded and evaluated against the real
     * series without an error. */
    const char *names[] = {"MockeryServerDown",
                           "MockeryHigh5xxRate",
                           "MockeryStoreUnavailable",
                           "MockeryKeysStuckProcessing",
                           "MockeryStorePoolSaturated",
                           "MockeryReplayCacheHitRatioCollapsed",
                           "MockeryAcquirerOutcomesUnknown",
                           "MockeryRecoveryBehind",
                           "MockeryWebhooksBehind",
                           "MockeryWebhookDeliveriesFailed"};
    size_t nnames = sizeof names / sizeof names[0];
    size_t ok = 0, total = 0;
    char last[512] = "";
    for (int i = 0; i < 100 && !(ok == nnames && total == nnames); i++) {
        if (i)
            test_sleep_ms(200);
        cJSON *root;
        cJSON *data = prom_get("/api/v1/rules", &root);
        ok = total = 0;
        cJSON *group;
        cJSON_ArrayForEach(group, cJSON_GetObjectItemCaseSensitive(data, "groups"))
        {
            cJSON *rule;
            cJSON_ArrayForEach(rule, cJSON_GetObjectItemCaseSensitive(group, "rules"))
            {
                const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(rule, "name"));
                const char *health = cJSON_GetStringValue(cJSON_GetObjectItem(rule, "health"));
                const char *state = cJSON_GetStringValue(cJSON_GetObjectItem(rule, "state"));
                total++;
                int known = 0;
                for (size_t k = 0; k < nnames; k++)
                    known |= name && strcmp(name, names[k]) == 0;
                if (known && health && strcmp(health, "ok") == 0 && state &&
                    strcmp(state, "inactive") == 0)
                    ok++;
                else
                    snprintf(last, sizeof last, "%s: health %s, state %s", name ? name : "?",
                             health ? health : "?", state ? state : "?");
            }
        }
        cJSON_Delete(root);
    }
    cr_assert_eq(total, nnames, "Prometheus loaded %zu rules, want %zu", total, nnames);
    cr_assert_eq(ok, nnames, "not every rule evaluated ok and inactive; last seen: %s", last);

    /* The server goes away: its target goes down and the alert is pending
     * (it fires after a minute of that). */
    test_server_stop(&srv);
    srv.pid = 0;
    cr_assert_eq(promql_until("up{job=\"mockery\"}", 0, 20), 0, "the target did not go down");
    double pending = promql_until("count(ALERTS{alertname=\"MockeryServerDown\","
                                  "alertstate=\"pending\"})",
                                  1, 20);
    cr_assert_eq(pending, 1, "MockeryServerDown is not pending (count %g)", pending);
}
