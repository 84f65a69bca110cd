/* faults.h - the failures mockery-acquirer acts out on purpose, for tests
 * and chaos runs (docs/acquirer.md: faults)
 *
 * Each --fault flag is one rule, KIND:SELECTOR[:ms=N]:
 *   latency  wait N ms before anything (default 1000)
 *   hold     record the charge (refund), then hold the answer N ms
 *            (default 5000) - past a client's timeout - or until
 *            faults_release_holds() (SIGUSR1)
 *   500      record it, then answer 500 instead of its outcome
 *   close    record it, then close the connection without an answer
 *   503      answer 503 without recording anything (nothing moved)
 * SELECTOR is rate=R (a fraction of requests, 0 < R <= 1, drawn per
 * request) or prefix=P (requests whose customer id - for a refund, its
 * charge's - starts with P). Several rules may apply to one request.
 * Only a request that runs its operation is hurt by hold, 500 and close:
 * a replay answers the recorded outcome, which is how a client asking
 * again learns what happened. Read-only after start-up (but for the holds'
 * release count); thread-safe.
 */
#ifndef MOCKERY_FAULTS_H
#define MOCKERY_FAULTS_H

#include <stddef.h>

enum fault_kind {
    FAULT_LATENCY = 0,
    FAULT_HOLD,
    FAULT_500,
    FAULT_CLOSE,
    FAULT_503,
    FAULT_KINDS,
};

#define FAULTS_MAX 16

struct fault_rule {
    enum fault_kind kind;
    double rate;     /* with no prefix: the fraction of requests */
    char prefix[65]; /* "": by rate */
    int ms;
};

struct faults {
    struct fault_rule rules[FAULTS_MAX];
    int n;
};

/* Holds an answer: returns after ms, or sooner once faults_release_holds()
 * is called after the hold began. */
void faults_hold(int ms);

/* Ends every hold under way now (later holds run their time): from a
 * signal handler too (SIGUSR1: a test lets held answers go when it is
 * ready, rather than guess how long it needs). */
void faults_release_holds(void);

/* What applies to one request. */
struct fault_pick {
    int on[FAULT_KINDS];
    int latency_ms, hold_ms;
};

/* Adds a rule from a flag's value; 0, or -1 with why in err. */
int faults_add(struct faults *f, const char *spec, char *err, size_t errlen);

/* Whether any rule selects by prefix (a refund's charge is then read first). */
int faults_by_prefix(const struct faults *f);

/* The rules that apply to a request of this customer (NULL: unknown, so
 * only rules by rate can apply). */
void faults_pick(const struct faults *f, const char *customer_id, struct fault_pick *out);

/* The rule's kind by name ("hold"), for the log. */
const char *fault_name(enum fault_kind k);

#endif
