/* The fast kinds of scripts/churn, in C: fork+exec, fork+exit and thread create+exit.
 *
 *     churn-fast KIND RATE SECONDS
 *
 * KIND is fork_exec, fork_exit or threads. Paces event i to i / RATE seconds after
 * the start (a driver that falls behind runs flat out, so the achieved rate is the
 * capacity), starting the events that are due together (up to 256 threads or 32
 * forks at once, then waiting for them all), stops after SECONDS, then prints one JSON line on stdout:
 * {"kind": ..., "events": N, "failures": N, "seconds": S}.
 *
 * Threads get THREAD_STACK_BYTES of stack: they do nothing, and with glibc's default
 * 8 MiB each a batch outgrows glibc's cache of stacks, so every thread costs an mmap
 * and a munmap (a TLB shootdown across the busy VM's CPUs): measured beside a 2 x 200
 * MB workload in the 2-node TCG VM, ~1,000 threads/s with 8 MiB stacks, ~3,000 with
 * 64 KiB.
 *
 * scripts/churn compiles this with cc when it starts (Python's fork and thread
 * start cost ~50x more than this under TCG, far below the rates the race tests
 * ask for) and falls back to its Python drivers when there is no compiler.
 * A test tool, not part of the daemon.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *nothing(void *arg)
{
    return arg;
}

#define MAX_BATCH 256   /* threads; forks go MAX_FORK_BATCH at a time */
#define MAX_FORK_BATCH 32
#define THREAD_STACK_BYTES (64 * 1024)

static pthread_attr_t thread_attr;

/* Each action starts `n` events at once and then waits for all of them (a batch of
 * the events that are due): one scheduling round trip per batch rather than per
 * event, which is what bounds the rate on a busy TCG VM. Returns the failures. */
static int fork_batch(int n, int exec)
{
    pid_t pids[MAX_FORK_BATCH];
    int failures = 0, started = 0;
    for (int i = 0; i < n; i++) {  /* n <= MAX_FORK_BATCH: main caps it */
        pid_t pid = fork();
        if (pid < 0) {
            failures++;
            continue;
        }
        if (pid == 0) {
            if (exec)
                execl("/bin/true", "true", (char *)NULL);
            _exit(exec ? 127 : 0);
        }
        pids[started++] = pid;
    }
    for (int i = 0; i < started; i++) {
        int status;
        if (waitpid(pids[i], &status, 0) != pids[i] || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failures++;
    }
    return failures;
}

static int fork_exec(int n)
{
    return fork_batch(n, 1);
}

static int fork_exit(int n)
{
    return fork_batch(n, 0);
}

static int threads(int n)
{
    pthread_t ts[MAX_BATCH];
    int failures = 0, started = 0;
    for (int i = 0; i < n; i++) {
        if (pthread_create(&ts[started], &thread_attr, nothing, NULL) != 0)
            failures++;
        else
            started++;
    }
    for (int i = 0; i < started; i++)
        if (pthread_join(ts[i], NULL) != 0)
            failures++;
    return failures;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: churn-fast fork_exec|fork_exit|threads RATE SECONDS\n");
        return 2;
    }
    int (*action)(int);
    if (strcmp(argv[1], "fork_exec") == 0)
        action = fork_exec;
    else if (strcmp(argv[1], "fork_exit") == 0)
        action = fork_exit;
    else if (strcmp(argv[1], "threads") == 0)
        action = threads;
    else {
        fprintf(stderr, "churn-fast: unknown kind %s\n", argv[1]);
        return 2;
    }
    double rate = atof(argv[2]), seconds = atof(argv[3]);
    if (rate <= 0 || seconds <= 0) {
        fprintf(stderr, "churn-fast: RATE and SECONDS must be above 0\n");
        return 2;
    }
    if (pthread_attr_init(&thread_attr) != 0 || pthread_attr_setstacksize(&thread_attr, THREAD_STACK_BYTES) != 0) {
        fprintf(stderr, "churn-fast: cannot set up thread attributes\n");
        return 1;
    }
    long events = 0, failures = 0;
    double t0 = now(), deadline = t0 + seconds;
    for (;;) {
        double t = now();
        if (t >= deadline)
            break;
        double due = t0 + events / rate;
        if (due > t) {
            double wait = (due < deadline ? due : deadline) - t;
            struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
            nanosleep(&ts, NULL);
            continue;
        }
        long due_now = (long)((t - t0) * rate) + 1 - events;  /* events due by now, this one included */
        int n = due_now < 1 ? 1 : due_now > MAX_BATCH ? MAX_BATCH : (int)due_now;
        if (action != threads && n > MAX_FORK_BATCH)
            n = MAX_FORK_BATCH;
        failures += action(n);
        events += n;
    }
    printf("{\"kind\": \"%s\", \"events\": %ld, \"failures\": %ld, \"seconds\": %.3f}\n", argv[1], events,
           failures, now() - t0);
    return 0;
}
