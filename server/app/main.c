/* main.c - mockery-server: flags, logger, signals, run until told to stop */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "app.h"
#include "config.h"
#include "log.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

int main(int argc, char **argv)
{
    struct config cfg;
    char err[512] = "";
    config_defaults(&cfg);
    switch (config_parse(&cfg, argc, argv, err, sizeof err)) {
    case CONFIG_OK:
        break;
    case CONFIG_HELP:
        fputs(config_usage(), stdout);
        return 0;
    case CONFIG_INVALID:
        fprintf(stderr, "{\"level\":\"error\",\"msg\":\"invalid configuration\",\"error\":\"");
        for (const char *p = err; *p; p++)
            fprintf(stderr, (*p == '"' || *p == '\\') ? "\\%c" : "%c", *p);
        fprintf(stderr, "\"}\n");
        return 2;
    }

    struct logger *log = log_new(stderr, cfg.log_level);
    if (!log)
        return 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct app *app = app_start(&cfg, log, NULL, err, sizeof err);
    if (!app) {
        struct cJSON *line = log_begin(log, LOG_ERROR, "could not start");
        log_end(log, line ? (cJSON_AddStringToObject(line, "error", err), line) : NULL);
        log_free(log);
        return 1;
    }
    while (!stop_requested) {
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    log_msg(log, LOG_INFO, "stopping: finishing requests in flight");
    app_stop(app);
    log_msg(log, LOG_INFO, "stopped");
    log_free(log);
    return 0;
}
