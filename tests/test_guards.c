/* test_guards.c - the guards on their own: the connection table
 * (server/conntable.c), connlimit's per-address limit and fair share, the
 * rate limit's buckets and the watchdog's body deadlines. Real sockets
 * (socketpairs, whose other end sees what a client would); the clock is
 * the test's where the module takes one.
 *
 * What is asserted is what a client sees: its connection ended (EOF on its
 * end) or not. */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <stdio.h>
#include <unistd.h>

#include "conntable.h"
#include "connlimit.h"
#include "ratelimit.h"
#include "watchdog.h"

#define S 1000000LL /* a second, in the table's microseconds */

struct pair {
    int server, client;
};

static struct pair open_pair(void)
{
    int fds[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0, "%s", strerror(errno));
    return (struct pair){fds[0], fds[1]};
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

/* The same, after reading what was queued before the end. */
static int ended_after_queued(const struct pair *p)
{
    char buf[4096];
    for (;;) {
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
    cr_assert(ended(&p[0]), "the oldest idle connection was not ended");
    for (int i = 1; i < 4; i++)
        cr_assert_not(ended(&p[i]), "connection %d ended too", i);
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
    cr_assert_not(ended(&a));
    cr_assert_not(ended(&b));
    /* b's wait reaches the minimum: b goes, a stays */
    cr_assert_eq(conntable_check(t, 100 * S + CONNTABLE_SHED_MIN_MS * 1000LL), 1);
    cr_assert_not(ended(&a));
    cr_assert(ended(&b));
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
    cr_assert_not(ended(&a), "the connection with a request waiting was shed");
    cr_assert(ended(&b));
    end_two(t, sa, sb, &a, &b);
}

/* Answers the client has not taken: the deadline runs from the first
 * answer written while earlier ones were still queued, across answers, and
 * at CONNTABLE_DRAIN_MS the next answer is refused and a write still going
 * is shut - with every slot free (no pressure). A client that takes
 * everything starts a new backlog at each answer. */
Test(conntable, answers_not_taken_for_the_drain_deadline_end_the_connection)
{
    struct conntable *t = conntable_new(8, 1);
    struct pair slow = open_pair(), fast = open_pair();
    struct conn_slot *s = conntable_enter(t, slow.server, 0);
    struct conn_slot *f = conntable_enter(t, fast.server, 0);
    int64_t drain = CONNTABLE_DRAIN_MS * 1000LL;
    char answer[1000];
    memset(answer, 'x', sizeof answer);
    for (int64_t now = 0; now < drain; now += S) {
        cr_assert_eq(conntable_write_begin(t, s, now), 0, "refused at %lld us", (long long)now);
        cr_assert_eq(send(slow.server, answer, sizeof answer, 0), (ssize_t)sizeof answer);
        conntable_set(t, s, CONN_WORKING, now);
        /* the fast client reads each answer before the next */
        cr_assert_eq(conntable_write_begin(t, f, 100 * S + now), 0);
        cr_assert_eq(send(fast.server, answer, sizeof answer, 0), (ssize_t)sizeof answer);
        char in[sizeof answer];
        cr_assert_eq(recv(fast.client, in, sizeof in, MSG_WAITALL), (ssize_t)sizeof in);
        conntable_set(t, f, CONN_WORKING, 100 * S + now);
    }
    cr_assert_eq(conntable_write_begin(t, s, drain), -1,
                 "an answer begun %d ms after the backlog began was allowed", CONNTABLE_DRAIN_MS);
    cr_assert_eq(conntable_write_begin(t, f, 100 * S + drain), 0, "the fast client was refused");
    /* the table's check shuts the write still going */
    cr_assert_eq(conntable_check(t, drain + 1), 1);
    cr_assert(ended_after_queued(&slow), "the slow client's connection did not end");
    struct conntable_counts c;
    conntable_counts(t, &c);
    cr_assert_eq(c.drained, 2, "%llu", c.drained); /* the refused answer, and the write shut */
    cr_assert_eq(c.shed, 0);
    end_two(t, s, f, &slow, &fast);
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
    watchdog_arm(wd, &w, p.server, watchdog_now_us() + S / 5);
    char buf[16];
    ssize_t n = recv(p.server, buf, sizeof buf, 0); /* blocks: the client sends nothing */
    cr_assert_eq(n, 0, "the read was not ended (%zd)", n);
    cr_assert(watchdog_disarm(wd, &w), "disarm did not say it fired");
    struct pair q = open_pair();
    watchdog_arm(wd, &w, q.server, watchdog_now_us() + 3600 * S);
    cr_assert_eq(send(q.client, "x", 1, 0), 1);
    cr_assert_eq(recv(q.server, buf, sizeof buf, 0), 1);
    cr_assert_not(watchdog_disarm(wd, &w), "a read that ended in time was marked fired");
    close_pair(&p);
    close_pair(&q);
    watchdog_free(wd);
}
