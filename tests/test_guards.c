/* test_guards.c - the guards on their own: the connection table
 * (server/guard/conntable.c), connlimit's per-address limit and fair share, the
 * rate limit's buckets and the watchdog's body deadlines. Real sockets
 * (TCP over loopback, whose other end sees what a client would); the clock is
 * the test's where the module takes one.
 *
 * What is asserted is what a client sees: its connection ended (EOF on its
 * end) or not. */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <stdio.h>
#include <unistd.h>

#include "clock.h"
#include "conntable.h"
#include "connlimit.h"
#include "ratelimit.h"
#include "watchdog.h"

#define S 1000000LL /* a second, in the table's microseconds */

struct pair {
    int server, client;
};

/* A TCP connection over loopback (the send queue counts bytes as the
 * server's sockets do: written and not yet acknowledged), the client's
 * receive buffer rcvbuf bytes (0: the default). */
static struct pair open_pair_with(int rcvbuf)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    cr_assert(l >= 0 && bind(l, (struct sockaddr *)&a, sizeof a) == 0 && listen(l, 1) == 0 &&
                  getsockname(l, (struct sockaddr *)&a, &alen) == 0,
              "%s", strerror(errno));
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (rcvbuf)
        cr_assert_eq(setsockopt(c, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
    cr_assert_eq(connect(c, (struct sockaddr *)&a, sizeof a), 0, "%s", strerror(errno));
    int s = accept(l, NULL, NULL);
    cr_assert_geq(s, 0, "%s", strerror(errno));
    close(l);
    return (struct pair){s, c};
}

static struct pair open_pair(void)
{
    return open_pair_with(0);
}

/* A client that can hold little: a 4 KiB receive buffer. */
static struct pair open_pair_small(void)
{
    return open_pair_with(4096);
}

/* Whether the client's end has seen its connection end (EOF, at once). */
static int ended(const struct pair *p)
{
    char buf[64];
    struct pollfd q = {.fd = p->client, .events = POLLIN};
    if (poll(&q, 1, 0) <= 0)
        return 0;
    ssize_t n = recv(p->client, buf, sizeof buf, MSG_DONTWAIT);
    return n == 0;
}

/* Whether the worker's read of the connection ends at once (the table
 * shut it for reading: a worker waiting for a request or a body stops, and
 * may still answer). */
static int read_ended(const struct pair *p)
{
    char buf[64];
    return recv(p->server, buf, sizeof buf, MSG_DONTWAIT) == 0;
}

/* The same, after reading what was queued before the end. */
static int ended_after_queued(const struct pair *p)
{
    char buf[65536];
    for (;;) {
        struct pollfd q = {.fd = p->client, .events = POLLIN};
        if (poll(&q, 1, 5000) <= 0)
            return 0;
        ssize_t n = recv(p->client, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0)
            return 1;
        if (n < 0)
            return 0;
    }
}

static void close_pair(struct pair *p)
{
    close(p->server);
    close(p->client);
}

/* The end of a test of two connections: their slots, sockets and table. */
static void end_two(struct conntable *t, struct conn_slot *sa, struct conn_slot *sb, struct pair *a,
                    struct pair *b)
{
    conntable_leave(t, sa);
    conntable_leave(t, sb);
    close_pair(a);
    close_pair(b);
    conntable_free(t);
}

/* Four slots, one to keep free: three connections leave it free, and
 * nothing is shed however long they idle; a fourth takes it, and the one
 * that has waited longest - at least CONNTABLE_SHED_MIN_MS - is shut. */
Test(conntable, sheds_the_oldest_waiting_connection_only_when_few_slots_are_free)
{
    struct conntable *t = conntable_new(4, 1);
    cr_assert_not_null(t);
    struct pair p[4];
    struct conn_slot *s[4];
    for (int i = 0; i < 3; i++) {
        p[i] = open_pair();
        s[i] = conntable_enter(t, p[i].server, (int64_t)i * S / 10);
    }
    cr_assert_eq(conntable_check(t, 60 * S), 0, "shed with a slot free");
    p[3] = open_pair();
    s[3] = conntable_enter(t, p[3].server, 60 * S);
    /* the fourth is new; of the other three, the first came first */
    cr_assert_eq(conntable_check(t, 60 * S + S / 2), 1);
    cr_assert(read_ended(&p[0]), "the oldest idle connection was not shed");
    for (int i = 1; i < 4; i++)
        cr_assert_not(read_ended(&p[i]), "connection %d shed too", i);
    cr_assert_eq(conntable_set(t, s[0], CONN_WORKING, 61 * S), -1,
                 "its worker was not told it was shed");
    cr_assert_eq(conntable_set(t, s[1], CONN_WORKING, 61 * S), 0);
    struct conntable_counts c;
    conntable_counts(t, &c);
    cr_assert_eq(c.shed, 1);
    /* Its slot free again, nothing more is shed. */
    conntable_leave(t, s[0]);
    cr_assert_eq(conntable_check(t, 70 * S), 0);
    for (int i = 1; i < 4; i++)
        conntable_leave(t, s[i]);
    for (int i = 0; i < 4; i++)
        close_pair(&p[i]);
    conntable_free(t);
}

/* A connection being worked on is never shed, nor one younger than
 * CONNTABLE_SHED_MIN_MS, however few slots are free. */
Test(conntable, never_sheds_a_request_being_worked_on_nor_a_young_connection)
{
    struct conntable *t = conntable_new(2, 1);
    struct pair a = open_pair(), b = open_pair();
    struct conn_slot *sa = conntable_enter(t, a.server, 0);
    struct conn_slot *sb = conntable_enter(t, b.server, 0);
    conntable_set(t, sa, CONN_WORKING, 0);
    conntable_set(t, sb, CONN_WAITING, 100 * S);
    cr_assert_eq(conntable_check(t, 100 * S + CONNTABLE_SHED_MIN_MS * 1000LL - 1), 0);
    cr_assert_not(read_ended(&a));
    cr_assert_not(read_ended(&b));
    /* b's wait reaches the minimum: b goes, a stays */
    cr_assert_eq(conntable_check(t, 100 * S + CONNTABLE_SHED_MIN_MS * 1000LL), 1);
    cr_assert_not(read_ended(&a));
    cr_assert(read_ended(&b));
    end_two(t, sa, sb, &a, &b);
}

/* The oldest waiting connection has a request in its socket that its
 * worker has not read yet: it is passed over, the next one is shed. */
Test(conntable, passes_over_a_connection_whose_request_is_waiting_unread)
{
    struct conntable *t = conntable_new(2, 1);
    struct pair a = open_pair(), b = open_pair();
    struct conn_slot *sa = conntable_enter(t, a.server, 0);
    struct conn_slot *sb = conntable_enter(t, b.server, S);
    const char req[] = "GET /health HTTP/1.1\r\n\r\n";
    cr_assert_eq(send(a.client, req, sizeof req - 1, 0), (ssize_t)(sizeof req - 1));
    cr_assert_eq(conntable_check(t, 10 * S), 1);
    cr_assert_not(read_ended(&a), "the connection with a request waiting was shed");
    cr_assert(read_ended(&b));
    end_two(t, sa, sb, &a, &b);
}

/* The server stops. During its drain, the connections waiting for a
 * request after an answer (idle kept-alive) are shut for reading, and a new
 * one, not yet answered, is not; once civetweb answers nothing more, every
 * waiting one is. Whatever their age and however many slots are free. One
 * being worked on, reading a body or writing an answer is left to finish. */
Test(conntable, the_stop_shuts_the_idle_connections_only)
{
    struct conntable *t = conntable_new(8, 1);
    cr_assert_not_null(t);
    enum { KEPT_ALIVE, NEW, WORKING, READING, WRITING, N };
    struct pair p[N];
    struct conn_slot *s[N];
    for (int i = 0; i < N; i++) {
        p[i] = open_pair();
        s[i] = conntable_enter(t, p[i].server, 0);
    }
    conntable_write_begin(t, s[KEPT_ALIVE], 0, 100);
    conntable_set(t, s[KEPT_ALIVE], CONN_WAITING, 0);
    conntable_set(t, s[WORKING], CONN_WORKING, 0);
    conntable_set(t, s[READING], CONN_READING, 0);
    conntable_write_begin(t, s[WRITING], 0, 100);
    cr_assert_eq(conntable_shut_idle(t, 1), 1);
    for (int i = 0; i < N; i++)
        cr_assert_eq(read_ended(&p[i]), i == KEPT_ALIVE, "connection %d, served only", i);
    cr_assert_eq(conntable_set(t, s[KEPT_ALIVE], CONN_WORKING, 0), -1, "its worker was not told");
    cr_assert_eq(conntable_shut_idle(t, 0), 1);
    for (int i = 0; i < N; i++)
        cr_assert_eq(read_ended(&p[i]), i == KEPT_ALIVE || i == NEW, "connection %d, all", i);
    cr_assert_eq(conntable_shut_idle(t, 0), 0, "shut twice");
    for (int i = 0; i < N; i++) {
        conntable_leave(t, s[i]);
        close_pair(&p[i]);
    }
    conntable_free(t);
}

/* A client that takes nothing (a 4 KiB receive buffer, never read): its
 * answers back up in the server's send queue; once it has been more than
 * one answer behind for CONNTABLE_DRAIN_MS, the next answer is refused and
 * the connection ended - with every slot free (no pressure). A client that
 * takes each answer is never refused. */
Test(conntable, answers_not_taken_for_the_drain_deadline_end_the_connection)
{
    struct conntable *t = conntable_new(8, 1);
    struct pair slow = open_pair_small(), fast = open_pair();
    struct conn_slot *s = conntable_enter(t, slow.server, 0);
    struct conn_slot *f = conntable_enter(t, fast.server, 0);
    int64_t drain = CONNTABLE_DRAIN_MS * 1000LL;
    static char answer[65536];
    memset(answer, 'x', sizeof answer);
    int64_t now = 0;
    for (; now <= drain; now += S) {
        cr_assert_eq(conntable_write_begin(t, s, now, sizeof answer), 0, "refused at %lld us",
                     (long long)now);
        (void)!send(slow.server, answer, sizeof answer, MSG_DONTWAIT); /* what fits */
        conntable_set(t, s, CONN_WORKING, now);
        /* the fast client reads each answer before the next */
        cr_assert_eq(conntable_write_begin(t, f, now, 1000), 0);
        cr_assert_eq(send(fast.server, answer, 1000, 0), 1000);
        char in[1000];
        cr_assert_eq(recv(fast.client, in, sizeof in, MSG_WAITALL), (ssize_t)sizeof in);
        conntable_set(t, f, CONN_WORKING, now);
    }
    /* behind since its second answer (the first may be in flight) */
    cr_assert_eq(conntable_write_begin(t, s, now, sizeof answer), -1,
                 "an answer %lld us after the client last kept up was allowed", (long long)now);
    cr_assert(ended_after_queued(&slow), "the slow client's connection did not end");
    cr_assert_eq(conntable_write_begin(t, f, now, 1000), 0, "the fast client was refused");
    struct conntable_counts c;
    conntable_counts(t, &c);
    cr_assert_eq(c.drained, 1, "%llu", c.drained);
    cr_assert_eq(c.shed, 0);
    end_two(t, s, f, &slow, &fast);
}

/* A client that pipelines on a real link has the previous answer in flight
 * whenever the next one starts: one answer behind is keeping up, and
 * never ends its connection; a write that hangs past the deadline is shut
 * by the table's check. */
Test(conntable, one_answer_in_flight_is_keeping_up_and_a_stuck_write_is_shut)
{
    struct conntable *t = conntable_new(8, 1);
    struct pair behind = open_pair(), stuck = open_pair();
    struct conn_slot *b = conntable_enter(t, behind.server, 0);
    struct conn_slot *k = conntable_enter(t, stuck.server, 0);
    char answer[1000], in[sizeof answer];
    memset(answer, 'x', sizeof answer);
    for (int64_t now = 0; now < 3 * CONNTABLE_DRAIN_MS * 1000LL; now += S) {
        cr_assert_eq(conntable_write_begin(t, b, now, sizeof answer), 0, "cut at %lld us",
                     (long long)now);
        cr_assert_eq(send(behind.server, answer, sizeof answer, 0), (ssize_t)sizeof answer);
        conntable_set(t, b, CONN_WORKING, now);
        if (now > 0) /* it reads the answer before this one */
            cr_assert_eq(recv(behind.client, in, sizeof in, MSG_WAITALL), (ssize_t)sizeof in);
    }
    cr_assert_eq(conntable_write_begin(t, k, 0, sizeof answer), 0);
    cr_assert_eq(conntable_check(t, CONNTABLE_DRAIN_MS * 1000LL - 1), 0);
    cr_assert_eq(conntable_check(t, CONNTABLE_DRAIN_MS * 1000LL), 1);
    cr_assert(ended(&stuck), "the stuck write's connection did not end");
    end_two(t, b, k, &behind, &stuck);
}

/* A body shed while few slots are free is shut for reading only: its
 * reader is told (conntable_set says -1) and may still write its 408. */
Test(conntable, a_body_shed_still_gets_its_answer_written)
{
    struct conntable *t = conntable_new(2, 1);
    struct pair a = open_pair(), b = open_pair();
    struct conn_slot *sa = conntable_enter(t, a.server, 0);
    struct conn_slot *sb = conntable_enter(t, b.server, 0);
    conntable_set(t, sa, CONN_READING, 0);
    conntable_set(t, sb, CONN_WORKING, 0);
    cr_assert_eq(conntable_check(t, 10 * S), 1);
    cr_assert_eq(conntable_set(t, sa, CONN_WORKING, 10 * S), -1, "the reader was not told");
    cr_assert_eq(conntable_write_begin(t, sa, 10 * S, 3), 0, "its 408 may not be written");
    cr_assert_eq(send(a.server, "408", 3, 0), 3);
    char in[3];
    cr_assert_eq(recv(a.client, in, sizeof in, 0), 3, "the client did not get its answer");
    end_two(t, sa, sb, &a, &b);
}

/* connlimit: the fixed limit per address; with few workers free (shared >
 * 0), each address's share of them among those holding connections, at
 * least one; an address alone keeps its limit. */
Test(connlimit, an_address_is_held_to_its_share_only_beside_others)
{
    struct connlimit *c = connlimit_new(64);
    cr_assert_not_null(c);
    for (int i = 0; i < 64; i++)
        cr_assert_eq(connlimit_enter(c, "10.0.0.1", 0), 0, "connection %d refused", i);
    cr_assert_eq(connlimit_enter(c, "10.0.0.1", 0), -1, "the 65th was let in");
    /* alone, under pressure: its limit still */
    cr_assert_eq(connlimit_enter(c, "10.0.0.1", 16), -1);
    connlimit_leave(c, "10.0.0.1");
    cr_assert_eq(connlimit_enter(c, "10.0.0.1", 16), 0, "an address alone was held to a share");
    /* a second address: 16 shared by two is 8 each; the first holds 64 */
    for (int i = 0; i < 8; i++)
        cr_assert_eq(connlimit_enter(c, "10.0.0.2", 16), 0, "connection %d of 8 refused", i);
    cr_assert_eq(connlimit_enter(c, "10.0.0.2", 16), -1, "the 9th of a share of 8 was let in");
    cr_assert_eq(connlimit_enter(c, "10.0.0.1", 16), -1);
    /* without pressure, the limit again */
    cr_assert_eq(connlimit_enter(c, "10.0.0.2", 0), 0);
    /* at least one each, however many addresses */
    cr_assert_eq(connlimit_enter(c, "10.0.0.3", 1), 0);
    cr_assert_eq(connlimit_refused(c), 4);
    connlimit_free(c);
}

/* A tenant's bucket: `rate` a second with one second saved up; over it,
 * refused with the whole seconds until a token is back, nothing taken;
 * tenants do not share. Rate 0: no limit. */
Test(ratelimit, a_tenant_spends_its_rate_and_gets_the_wait_when_over_it)
{
    struct ratelimit *rl = ratelimit_new(10);
    cr_assert_not_null(rl);
    int retry = 0;
    int64_t t0 = 1000 * S;
    for (int i = 0; i < 10; i++)
        cr_assert_eq(ratelimit_take(rl, "alice", 1, t0, &retry), 0, "request %d refused", i);
    cr_assert_eq(ratelimit_take(rl, "alice", 1, t0, &retry), -1, "the 11th in a second was let in");
    cr_assert_geq(retry, 1);
    cr_assert_eq(ratelimit_take(rl, "bob", 1, t0, &retry), 0, "bob paid for alice");
    /* a tenth of a second gives one token back */
    cr_assert_eq(ratelimit_take(rl, "alice", 1, t0 + S / 10, &retry), 0);
    cr_assert_eq(ratelimit_take(rl, "alice", 1, t0 + S / 10, &retry), -1);
    ratelimit_free(rl);
    struct ratelimit *none = ratelimit_new(0);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(ratelimit_take(none, "alice", 1, t0, &retry), 0);
    ratelimit_free(none);
}

/* Per address, in a fixed table: many addresses cost no memory and each
 * still gets its own rate when their slots differ. */
Test(ratelimit, addresses_without_a_key_have_buckets_of_their_own)
{
    struct ratelimit *rl = ratelimit_new_per_address(2);
    int retry = 0;
    int64_t t0 = 1000 * S;
    cr_assert_eq(ratelimit_take(rl, "10.0.0.1", 1, t0, &retry), 0);
    cr_assert_eq(ratelimit_take(rl, "10.0.0.1", 1, t0, &retry), 0);
    cr_assert_eq(ratelimit_take(rl, "10.0.0.1", 1, t0, &retry), -1);
    int others = 0;
    char addr[32];
    for (int i = 0; i < 10000; i++) {
        snprintf(addr, sizeof addr, "10.1.%d.%d", i / 256, i % 256);
        others += ratelimit_take(rl, addr, 1, t0, &retry) == 0;
    }
    /* 10,000 addresses in 4,096 slots: most get through at once */
    cr_assert_gt(others, 4096, "only %d of 10,000 addresses let through", others);
    ratelimit_free(rl);
}

/* A read armed with the watchdog and still going at its deadline has its
 * socket shut for reading: the blocked read ends at once (here: returns
 * 0), and disarm says it fired. One that ends first is not touched. */
Test(watchdog, a_read_past_its_deadline_is_ended, .timeout = 30)
{
    struct watchdog *wd = watchdog_new(NULL, NULL);
    cr_assert_not_null(wd);
    struct pair p = open_pair();
    struct watch w;
    watchdog_arm(wd, &w, p.server, clock_mono_us() + S / 5);
    char buf[16];
    ssize_t n = recv(p.server, buf, sizeof buf, 0); /* blocks: the client sends nothing */
    cr_assert_eq(n, 0, "the read was not ended (%zd)", n);
    cr_assert(watchdog_disarm(wd, &w), "disarm did not say it fired");
    struct pair q = open_pair();
    watchdog_arm(wd, &w, q.server, clock_mono_us() + 3600 * S);
    cr_assert_eq(send(q.client, "x", 1, 0), 1);
    cr_assert_eq(recv(q.server, buf, sizeof buf, 0), 1);
    cr_assert_not(watchdog_disarm(wd, &w), "a read that ended in time was marked fired");
    close_pair(&p);
    close_pair(&q);
    watchdog_free(wd);
}
