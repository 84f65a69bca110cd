/* webhook_receiver.h - a webhook endpoint as a merchant would run one (the
 * walkthrough's own, and mockery-webhook-sink's): an HTTP server
 * (civetweb) that takes the service's deliveries (POST), checks each one's
 * Mockery-Signature with the endpoint's secret, and keeps each event once
 * by its Mockery-Event-Id (the first 256 events; later ones are counted
 * only). GET answers the counts as JSON.
 */
#ifndef MOCKERY_WEBHOOK_RECEIVER_H
#define MOCKERY_WEBHOOK_RECEIVER_H

#include <stddef.h>

struct receiver;

/* An event as received first (later deliveries of it only counted). */
struct received_event {
    char id[64];
    char type[40];
};

/* What came in so far. */
struct receiver_counts {
    int deliveries; /* POSTs answered */
    int verified;   /* with a good signature, t within 5 minutes */
    int duplicates; /* deliveries of an event already received, dropped */
    int events;     /* distinct events kept */
};

/* Listens on ports ("127.0.0.1:0" for any free port; civetweb's
 * listening_ports syntax). NULL with err set on failure. */
struct receiver *receiver_start(const char *ports, char *err, size_t errlen);
/* The port it listens on. */
int receiver_port(const struct receiver *r);
/* The endpoint's secret, once the service has shown it: deliveries before
 * this are answered 503 (and so sent again). */
void receiver_set_secret(struct receiver *r, const char *secret);
void receiver_counts(struct receiver *r, struct receiver_counts *out);
/* Has event id been received (with a good signature)? */
int receiver_has(struct receiver *r, const char *id);
void receiver_stop(struct receiver *r);

#endif
