/* The fast kinds of scripts/churn, in C: fork+exec, fork+exit and thread create+exit.
 *
 *     churn-fast KIND RATE SECONDS
 *
 * KIND is fork_exec, fork_exit or threads. Paces event i to i / RATE seconds after
 * the start (a driver that falls behind runs flat out, so the achieved rate is the
 * capacity), stops after SECONDS, then prints one JSON line on stdout:
 * {"kind": ..., "events": N, "failures": N, "seconds": S}.
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

static int fork_exec(void)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execl("/bin/true", "true", (char *)NULL);
        _exit(127);
    }
    int status;
    return waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static int fork_exit(void)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0)
        _exit(0);
    return waitpid(pid, NULL, 0) == pid ? 0 : -1;
}

static int thread_once(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, nothing, NULL) != 0)
        return -1;
    return pthread_join(t, NULL) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: churn-fast fork_exec|fork_exit|threads RATE SECONDS\n");
        return 2;
    }
    int (*action)(void);
    if (strcmp(argv[1], "fork_exec") == 0)
        action = fork_exec;
    else if (strcmp(argv[1], "fork_exit") == 0)
        action = fork_exit;
    else if (strcmp(argv[1], "threads") == 0)
        action = thread_once;
    else {
        fprintf(stderr, "churn-fast: unknown kind %s\n", argv[1]);
        return 2;
    }
    double rate = atof(argv[2]), seconds = atof(argv[3]);
    if (rate <= 0 || seconds <= 0) {
        fprintf(stderr, "churn-fast: RATE and SECONDS must be above 0\n");
        return 2;
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
        if (action() != 0)
            failures++;
        events++;
    }
    printf("{\"kind\": \"%s\", \"events\": %ld, \"failures\": %ld, \"seconds\": %.3f}\n", argv[1], events,
           failures, now() - t0);
    return 0;
}
