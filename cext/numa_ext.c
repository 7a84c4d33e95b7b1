/*
 * numa_ext: libnuma and perf_event_open behind coarse calls.  See numa_ext.h
 * for what each entry point does; this file only says how.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getcpu; Python.h has defined it already when cffi compiles this */
#endif
#include "numa_ext.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <linux/perf_event.h>
#include <numa.h>
#include <numaif.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Pages per move_pages call: large enough that the per-call cost (task lookup,
 * permission check) vanishes, small enough to keep the buffers in cache. */
#define BATCH_PAGES 2048

/* Marks a status entry the kernel did not fill in. */
#define STATUS_UNSET INT_MIN

static uint64_t page_size(void)
{
    return (uint64_t)sysconf(_SC_PAGESIZE);
}

/* ---- random numbers: splitmix64 ---------------------------------------- */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n). */
static uint64_t random_below(uint64_t *state, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)splitmix64(state) * n) >> 64);
}

/* ---- node queries and moves ------------------------------------------- */

static void fill_pointers(void **pages, const uint64_t *addrs, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        pages[i] = (void *)(uintptr_t)addrs[i];
}

int ane_page_nodes(int pid, const uint64_t *addrs, int64_t count, int *status)
{
    void *pages[BATCH_PAGES];

    for (int64_t done = 0; done < count; done += BATCH_PAGES) {
        int64_t n = count - done < BATCH_PAGES ? count - done : BATCH_PAGES;
        fill_pointers(pages, addrs + done, n);
        if (numa_move_pages(pid, (unsigned long)n, pages, NULL, status + done, 0) < 0)
            return -errno;
    }
    return 0;
}

int ane_move_pages(int pid, const uint64_t *addrs, int64_t count,
                   const int *nodes, int *status, int move_all)
{
    void *pages[BATCH_PAGES];
    int now[BATCH_PAGES];
    int flags = move_all ? MPOL_MF_MOVE_ALL : MPOL_MF_MOVE;

    for (int64_t done = 0; done < count; done += BATCH_PAGES) {
        int64_t n = count - done < BATCH_PAGES ? count - done : BATCH_PAGES;
        int *batch_status = status + done;
        long rc;

        fill_pointers(pages, addrs + done, n);
        for (int64_t i = 0; i < n; i++)
            batch_status[i] = STATUS_UNSET;
        rc = numa_move_pages(pid, (unsigned long)n, pages, nodes + done, batch_status, flags);
        if (rc < 0)
            return -errno;
        if (rc == 0)
            continue;
        /* The kernel stopped part-way (rc pages not migrated) and left the
         * status of the rest unset: report where those pages are now. */
        if (numa_move_pages(pid, (unsigned long)n, pages, NULL, now, 0) < 0)
            return -errno;
        for (int64_t i = 0; i < n; i++)
            if (batch_status[i] == STATUS_UNSET)
                batch_status[i] = now[i];
    }
    return 0;
}

/* Pages of a transparent huge page, and its size: the kernel moves a THP whole
 * when asked for any one of its pages, so a run of HPAGE_PAGES candidates that
 * starts at an aligned address is first moved by its first page alone. */
#define HPAGE_PAGES 512

static uint64_t hpage_size(void)
{
    return HPAGE_PAGES * page_size();
}

/* Book the outcome of candidate i (status st). */
static void book_candidate(void **pages, const int64_t *cand_range, int64_t i, int st, int to_node,
                           struct ane_range_moves *pos, int64_t *tried, int64_t *moved,
                           int64_t *status_counts, int n_status_counts, uint64_t *moved_addrs)
{
    tried[cand_range[i]]++;
    pos->tried++;
    if (st == to_node) {
        moved[cand_range[i]]++;
        moved_addrs[pos->moved++] = (uint64_t)(uintptr_t)pages[i];
    } else if (st < 0) {
        int e = -st;
        status_counts[e < n_status_counts ? e : 0]++;
    }
}

/* move_pages for n pages to to_node; status[] filled in for every page (where the
 * kernel stopped part-way, the rest are queried). */
static int move_to_node(int pid, void **pages, int64_t n, int to_node, int flags, int *status)
{
    int nodes[BATCH_PAGES], now[BATCH_PAGES];
    long rc;

    for (int64_t i = 0; i < n; i++) {
        nodes[i] = to_node;
        status[i] = STATUS_UNSET;
    }
    rc = numa_move_pages(pid, (unsigned long)n, pages, nodes, status, flags);
    if (rc < 0)
        return -errno;
    for (int64_t i = 0; i < n && rc == 0; i++)
        if (status[i] == -EBUSY)
            rc = 1;
    if (rc > 0) {
        /* The kernel stopped part-way (where are the pages it left unset?), or found
         * a page busy: the second page of a THP it was moving whole is (the others
         * it finds moved), so that one counts where it went too */
        if (numa_move_pages(pid, (unsigned long)n, pages, NULL, now, 0) < 0)
            return -errno;
        for (int64_t i = 0; i < n; i++)
            if (status[i] == STATUS_UNSET || (status[i] == -EBUSY && now[i] == to_node))
                status[i] = now[i];
    }
    return 0;
}

/* Move the batch of candidates (pages found on from_node) and book the outcome.
 * While *huge, runs of HPAGE_PAGES contiguous candidates from an aligned address
 * go first by their first page: where that was a THP its other pages are then
 * found on to_node by a status query (a few microseconds a page, where moving
 * each costs the kernel a page-table walk and a failed isolation of the same huge
 * page). A first run whose other pages did not follow (4 KiB pages) clears *huge:
 * each move_pages call costs the kernel a drain of every CPU's LRU caches, and
 * 4 KiB pages gain nothing from going in two. */
static int move_candidates(int pid, void **pages, const int64_t *cand_range, int64_t n, int to_node,
                           int flags, struct ane_range_moves *pos, int64_t *tried, int64_t *moved,
                           int64_t *status_counts, int n_status_counts, uint64_t *moved_addrs, int *huge)
{
    void *heads[BATCH_PAGES / HPAGE_PAGES + 1], *rest[BATCH_PAGES], *followers[BATCH_PAGES];
    int64_t head_at[BATCH_PAGES / HPAGE_PAGES + 1], rest_at[BATCH_PAGES], follower_at[BATCH_PAGES];
    int status[BATCH_PAGES], where[BATCH_PAGES];
    uint64_t psz = page_size(), hsz = hpage_size();
    int64_t n_heads = 0, n_rest = 0;
    int rc;

    if (n == 0)
        return 0;
    for (int64_t i = 0; *huge && i + HPAGE_PAGES <= n; i++) {
        uint64_t a = (uint64_t)(uintptr_t)pages[i];
        if (a % hsz != 0 || (uint64_t)(uintptr_t)pages[i + HPAGE_PAGES - 1] != a + (HPAGE_PAGES - 1) * psz)
            continue;
        head_at[n_heads] = i;
        heads[n_heads++] = pages[i];
        i += HPAGE_PAGES - 1;
    }
    if (n_heads > 0) {
        int64_t h = 0;

        rc = move_to_node(pid, heads, n_heads, to_node, flags, status);
        if (rc < 0)
            return rc;
        /* the pages of each head's run that moved: where are they now? */
        for (int64_t k = 0; k < n_heads; k++) {
            book_candidate(pages, cand_range, head_at[k], status[k], to_node, pos, tried, moved,
                           status_counts, n_status_counts, moved_addrs);
            if (status[k] != to_node)
                continue;
            for (int64_t j = 1; j < HPAGE_PAGES; j++) {
                follower_at[h] = head_at[k] + j;
                followers[h++] = pages[head_at[k] + j];
            }
        }
        if (h > 0 && numa_move_pages(pid, (unsigned long)h, followers, NULL, where, 0) < 0)
            return -errno;
        if (h > 0 && where[0] != to_node)
            *huge = 0;   /* 4 KiB pages: the rest of this call moves them as they come */
        /* followers found on to_node moved with their head; the others are moved below */
        for (int64_t i = 0, k = 0, r = 0; i < n; i++) {
            if (k < n_heads && i == head_at[k]) {
                k++;
                continue;
            }
            if (r < h && follower_at[r] == i) {
                if (where[r++] == to_node) {
                    book_candidate(pages, cand_range, i, to_node, to_node, pos, tried, moved,
                                   status_counts, n_status_counts, moved_addrs);
                    continue;
                }
            }
            rest_at[n_rest] = i;
            rest[n_rest++] = pages[i];
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            rest_at[i] = i;
            rest[i] = pages[i];
        }
        n_rest = n;
    }
    if (n_rest == 0)
        return 0;
    rc = move_to_node(pid, rest, n_rest, to_node, flags, status);
    if (rc < 0)
        return rc;
    for (int64_t i = 0; i < n_rest; i++)
        book_candidate(pages, cand_range, rest_at[i], status[i], to_node, pos, tried, moved,
                       status_counts, n_status_counts, moved_addrs);
    return 0;
}

/* pagemap(5) flags of an entry */
#define PM_PRESENT (1ULL << 63)
#define PM_MMAP_EXCLUSIVE (1ULL << 56)

/* The process's pagemap, or -1 (then every page of a batch is queried). */
static int open_pagemap(int pid)
{
    char path[48];

    if (pid == 0)
        snprintf(path, sizeof path, "/proc/self/pagemap");
    else
        snprintf(path, sizeof path, "/proc/%d/pagemap", pid);
    return open(path, O_RDONLY | O_CLOEXEC);
}

/* Of the n pages from addr, those worth a status query into query[]; their count.
 * With the pagemap readable: the pages present, and (unless move_all) mapped by
 * this process alone, since MPOL_MF_MOVE leaves a page another process maps too
 * where it is (-EACCES): what a forked process still shares with its parent is
 * then neither queried nor tried, and a 2 MiB region of an interpreter's heap with
 * a few pages of its own costs a read of 4 KiB of pagemap. */
static int64_t pages_to_query(int pagemap, uint64_t addr, int64_t n, uint64_t psz, int move_all,
                              void **query)
{
    uint64_t entries[BATCH_PAGES];
    int64_t q = 0;
    ssize_t want = (ssize_t)(n * (int64_t)sizeof(uint64_t));

    if (pagemap < 0 || pread(pagemap, entries, (size_t)want, (off_t)(addr / psz * sizeof(uint64_t))) != want) {
        for (int64_t i = 0; i < n; i++)
            query[i] = (void *)(uintptr_t)(addr + i * psz);
        return n;
    }
    for (int64_t i = 0; i < n; i++)
        if ((entries[i] & PM_PRESENT) && (move_all || (entries[i] & PM_MMAP_EXCLUSIVE)))
            query[q++] = (void *)(uintptr_t)(addr + i * psz);
    return q;
}

static int move_ranges(int pid, int pagemap, const uint64_t *starts, const uint64_t *ends, int64_t n_ranges,
                       int from_node, int to_node, int64_t limit, int move_all,
                       struct ane_range_moves *pos, int64_t *tried, int64_t *moved,
                       int64_t *status_counts, int n_status_counts, uint64_t *moved_addrs)
{
    void *query[BATCH_PAGES], *cand[BATCH_PAGES];
    int64_t cand_range[BATCH_PAGES];
    int where[BATCH_PAGES];
    int flags = move_all ? MPOL_MF_MOVE_ALL : MPOL_MF_MOVE;
    uint64_t psz = page_size(), hsz = hpage_size();
    int64_t n_cand = 0, taken = 0, found, q;
    int huge = 1;   /* move_candidates: runs tried by their first page (until one was no THP) */
    int rc;

    pos->tried = 0;
    pos->moved = 0;
    while (pos->range < n_ranges && taken < limit) {
        int64_t r = pos->range;
        uint64_t addr = pos->addr > starts[r] ? pos->addr : starts[r];
        int64_t n = 0;

        addr = (addr + psz - 1) & ~(psz - 1);
        while (n < BATCH_PAGES && addr + n * psz < ends[r])
            n++;
        if (n == 0) {                       /* this range is done */
            pos->range++;
            pos->addr = 0;
            continue;
        }
        /* batches end on huge page boundaries, and a batch's candidates go to the
         * kernel together (those of several batches too, as long as they fit): a
         * THP's run of candidates is cut in two only by the end of a grant */
        if (n == BATCH_PAGES && (addr + n * psz) % hsz != 0 && (addr + n * psz) / hsz * hsz > addr)
            n = (int64_t)(((addr + n * psz) / hsz * hsz - addr) / psz);
        q = pages_to_query(pagemap, addr, n, psz, move_all, query);
        if (q > 0 && numa_move_pages(pid, (unsigned long)q, query, NULL, where, 0) < 0)
            return -errno;
        found = 0;
        for (int64_t i = 0; i < q && found < limit - taken; i++)
            found += where[i] == from_node;
        if (n_cand + found > BATCH_PAGES) {
            rc = move_candidates(pid, cand, cand_range, n_cand, to_node, flags, pos, tried, moved,
                                 status_counts, n_status_counts, moved_addrs, &huge);
            if (rc < 0)
                return rc;
            n_cand = 0;
        }
        pos->addr = addr + n * psz;
        for (int64_t i = 0; i < q; i++) {
            if (where[i] != from_node)
                continue;
            if (taken == limit) {           /* resume at this page next time */
                pos->addr = (uint64_t)(uintptr_t)query[i];
                break;
            }
            cand[n_cand] = query[i];
            cand_range[n_cand++] = r;
            taken++;
            if (n_cand == BATCH_PAGES) {
                rc = move_candidates(pid, cand, cand_range, n_cand, to_node, flags, pos, tried, moved,
                                     status_counts, n_status_counts, moved_addrs, &huge);
                if (rc < 0)
                    return rc;
                n_cand = 0;
            }
        }
        if (pos->addr >= ends[r]) {         /* a range gone through ends there, grant or not */
            pos->range++;
            pos->addr = 0;
        }
    }
    return move_candidates(pid, cand, cand_range, n_cand, to_node, flags, pos, tried, moved,
                           status_counts, n_status_counts, moved_addrs, &huge);
}

int ane_move_ranges(int pid, const uint64_t *starts, const uint64_t *ends, int64_t n_ranges,
                    int from_node, int to_node, int64_t limit, int move_all,
                    struct ane_range_moves *pos, int64_t *tried, int64_t *moved,
                    int64_t *status_counts, int n_status_counts, uint64_t *moved_addrs)
{
    int pagemap = open_pagemap(pid);
    int rc = move_ranges(pid, pagemap, starts, ends, n_ranges, from_node, to_node, limit, move_all, pos,
                         tried, moved, status_counts, n_status_counts, moved_addrs);

    if (pagemap >= 0)
        close(pagemap);
    return rc;
}

static int valid_node(int node)
{
    return node >= 0 && node <= numa_max_possible_node();
}

int64_t ane_migrate_process_pages(int pid, const int *from_nodes, int n_from,
                                  const int *to_nodes, int n_to)
{
    struct bitmask *from, *to;
    int rc, err;

    for (int i = 0; i < n_from; i++)
        if (!valid_node(from_nodes[i]))
            return -EINVAL;
    for (int i = 0; i < n_to; i++)
        if (!valid_node(to_nodes[i]))
            return -EINVAL;
    from = numa_allocate_nodemask();
    to = numa_allocate_nodemask();
    for (int i = 0; i < n_from; i++)
        numa_bitmask_setbit(from, (unsigned int)from_nodes[i]);
    for (int i = 0; i < n_to; i++)
        numa_bitmask_setbit(to, (unsigned int)to_nodes[i]);
    rc = numa_migrate_pages(pid, from, to);
    err = errno;
    numa_bitmask_free(from);
    numa_bitmask_free(to);
    return rc < 0 ? -err : rc;
}

int ane_node_of_cpu(int cpu)
{
    int node;

    if (cpu < 0)
        return -EINVAL;
    node = numa_node_of_cpu(cpu);
    return node < 0 ? -EINVAL : node;
}

int ane_current_cpu(void)
{
    int cpu = sched_getcpu();

    return cpu < 0 ? -errno : cpu;
}

int ane_max_node(void)
{
    return numa_max_node();
}

int ane_numa_available(void)
{
    return numa_available() >= 0;
}

int ane_set_membind(int node)
{
    struct bitmask *mask;
    long rc;
    int err;

    if (!valid_node(node))
        return -EINVAL;
    mask = numa_allocate_nodemask();
    numa_bitmask_setbit(mask, (unsigned int)node);
    /* The kernel reads maxnode - 1 bits, hence the + 1 (as libnuma does). */
    rc = set_mempolicy(MPOL_BIND, mask->maskp, mask->size + 1);
    err = errno;
    numa_bitmask_free(mask);
    return rc < 0 ? -err : 0;
}

int ane_reset_mempolicy(void)
{
    return set_mempolicy(MPOL_DEFAULT, NULL, 0) < 0 ? -errno : 0;
}

/* ---- the sampling scanner --------------------------------------------- */

/* Where samples fall: systematic sampling. Each range gets one random start
 * offset in 0..stride-1 and then every stride-th page after it, so every page
 * has the same chance 1/stride of being sampled. Against a random pick per
 * window this samples interleaved memory exactly (node = page index mod k):
 * with a stride that shares no factor with k (the caller picks such strides,
 * see autonumad/mm_stats.choose_stride) the samples walk through every residue
 * in turn, so a per-node split comes out within one sample per mapping instead
 * of within binomial noise. */
/* One scan's working state: the pending batch and where results go. */
struct scan {
    int pid;
    uint64_t local_nodes;
    int n_nodes;
    int64_t *range_node_pages;
    uint64_t *off_addrs;
    int *off_nodes;
    int64_t max_off;
    uint64_t reservoir_rng;
    struct ane_scan_totals *totals;
    int64_t pending;
    void *pages[BATCH_PAGES];
    int64_t range_of[BATCH_PAGES];
    int status[BATCH_PAGES];
};

/* Keep a uniform choice of max_off among all off-node pages seen so far. */
static void keep_off_node(struct scan *s, uint64_t addr, int node)
{
    int64_t seen = ++s->totals->off_node;
    int64_t slot = seen - 1;

    if (seen > s->max_off) {
        slot = (int64_t)random_below(&s->reservoir_rng, (uint64_t)seen);
        if (slot >= s->max_off)
            return;
    } else {
        s->totals->n_off_out = seen;
    }
    s->off_addrs[slot] = addr;
    s->off_nodes[slot] = node;
}

static int flush_batch(struct scan *s)
{
    struct ane_scan_totals *t = s->totals;

    if (s->pending == 0)
        return 0;
    if (numa_move_pages(s->pid, (unsigned long)s->pending, s->pages, NULL, s->status, 0) < 0)
        return -errno;
    t->sampled += s->pending;
    for (int64_t i = 0; i < s->pending; i++) {
        int node = s->status[i];

        if (node >= 0 && node < s->n_nodes) {
            s->range_node_pages[s->range_of[i] * s->n_nodes + node]++;
            if (s->local_nodes && (node >= 64 || !(s->local_nodes >> node & 1)))
                keep_off_node(s, (uint64_t)(uintptr_t)s->pages[i], node);
        } else if (node == -ENOENT) {
            t->absent++;
        } else {
            t->errors++;
        }
    }
    s->pending = 0;
    return 0;
}

static int scan_range(struct scan *s, uint64_t *rng, int64_t r,
                      uint64_t start, uint64_t end, int64_t stride)
{
    uint64_t psz = page_size();
    uint64_t first = start & ~(psz - 1);
    uint64_t n_pages = end > first ? (end - first + psz - 1) / psz : 0;
    uint64_t offset = stride > 1 ? random_below(rng, (uint64_t)stride) : 0;
    int rc;

    for (uint64_t page = offset; page < n_pages; page += (uint64_t)stride) {
        s->pages[s->pending] = (void *)(uintptr_t)(first + page * psz);
        s->range_of[s->pending] = r;
        if (++s->pending == BATCH_PAGES && (rc = flush_batch(s)) < 0)
            return rc;
    }
    return 0;
}

int ane_scan_ranges(int pid, const uint64_t *starts, const uint64_t *ends,
                    int64_t n_ranges, int64_t stride_pages, uint64_t seed,
                    uint64_t local_nodes, int64_t *range_node_pages, int n_nodes,
                    uint64_t *off_addrs, int *off_nodes, int64_t max_off,
                    struct ane_scan_totals *totals)
{
    uint64_t rng = seed;
    struct scan *s;
    int rc;

    memset(totals, 0, sizeof(*totals));
    if (stride_pages < 1 || stride_pages > UINT32_MAX || n_nodes < 1 || max_off < 0)
        return -EINVAL;
    memset(range_node_pages, 0, sizeof(*range_node_pages) * (size_t)(n_ranges * n_nodes));
    s = malloc(sizeof(*s));
    if (!s)
        return -ENOMEM;
    rc = 0;
    s->pid = pid;
    s->local_nodes = local_nodes;
    s->n_nodes = n_nodes;
    s->range_node_pages = range_node_pages;
    s->off_addrs = off_addrs;
    s->off_nodes = off_nodes;
    s->max_off = max_off;
    s->reservoir_rng = seed ^ 0x5DEECE66Dull;
    s->totals = totals;
    s->pending = 0;
    for (int64_t r = 0; r < n_ranges && rc == 0; r++)
        rc = scan_range(s, &rng, r, starts[r], ends[r], stride_pages);
    if (rc == 0)
        rc = flush_batch(s);
    free(s);
    return rc;
}

/* ---- buffer sweeps for the workload ----------------------------------- */

/* Word `index` of the pattern for `seed`: an odd multiple of (index + 1), which
 * differs for every index, mixed with a per-seed key. */
static inline uint64_t pattern_word(uint64_t key, uint64_t index)
{
    return key ^ ((index + 1) * 0x9E3779B97F4A7C15ull);
}

static uint64_t pattern_key(uint64_t seed)
{
    return splitmix64(&seed);
}

int64_t ane_sweep(char *buf, int64_t offset, int64_t length,
                  uint64_t write_seed, int check_seed_given, uint64_t check_seed)
{
    uint64_t *words = (uint64_t *)(void *)(buf + offset);
    uint64_t first = (uint64_t)offset / 8;
    int64_t n = length / 8;
    uint64_t write_key = pattern_key(write_seed);
    uint64_t check_key = pattern_key(check_seed);
    int64_t mismatches = 0;

    if (check_seed_given) {
        for (int64_t i = 0; i < n; i++) {
            mismatches += words[i] != pattern_word(check_key, first + (uint64_t)i);
            words[i] = pattern_word(write_key, first + (uint64_t)i);
        }
    } else {
        for (int64_t i = 0; i < n; i++)
            words[i] = pattern_word(write_key, first + (uint64_t)i);
    }
    return mismatches;
}

/* ---- page-fault sampling ---------------------------------------------- */

/* One perf event and its ring buffer. */
struct fault_ring {
    int fd;
    struct perf_event_mmap_page *meta;
    size_t map_size;
    const char *data;
    uint64_t data_size;
};

struct ane_fault_sampler {
    int n_rings;
    int64_t capacity;
    struct fault_ring rings[];
};

/* What PERF_SAMPLE_TID | PERF_SAMPLE_ADDR | PERF_SAMPLE_CPU puts after the
 * record header, in the kernel's order. */
struct fault_sample {
    uint32_t pid, tid;
    uint64_t addr;
    uint32_t cpu, reserved;
};

struct lost_record {
    uint64_t id, lost;
};

static int open_fault_event(int tid, int64_t period)
{
    struct perf_event_attr attr;

    memset(&attr, 0, sizeof(attr));
    attr.size = sizeof(attr);
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_PAGE_FAULTS;
    attr.sample_period = (uint64_t)period;
    attr.sample_type = PERF_SAMPLE_TID | PERF_SAMPLE_ADDR | PERF_SAMPLE_CPU;
    attr.exclude_kernel = 1;
    attr.exclude_hv = 1;
    return (int)syscall(SYS_perf_event_open, &attr, tid, -1, -1, PERF_FLAG_FD_CLOEXEC);
}

static int map_ring(struct fault_ring *ring, int fd, int pages)
{
    size_t psz = (size_t)page_size();
    void *map;

    ring->map_size = psz * (size_t)(pages + 1);
    map = mmap(NULL, ring->map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        return -errno;
    ring->fd = fd;
    ring->meta = map;
    ring->data_size = ring->meta->data_size ? ring->meta->data_size : psz * (size_t)pages;
    ring->data = (const char *)map + (ring->meta->data_offset ? ring->meta->data_offset : psz);
    return 0;
}

void ane_fault_sampler_close(struct ane_fault_sampler *sampler)
{
    if (!sampler)
        return;
    for (int i = 0; i < sampler->n_rings; i++) {
        munmap(sampler->rings[i].meta, sampler->rings[i].map_size);
        close(sampler->rings[i].fd);
    }
    free(sampler);
}

int ane_fault_sampler_open(const int *tids, int n_tids, int pages, int64_t period,
                           int *tid_status, struct ane_fault_sampler **out)
{
    struct ane_fault_sampler *s;
    int first_error = -ESRCH;

    *out = NULL;
    if (n_tids < 0 || pages < 1 || (pages & (pages - 1)) != 0 || period < 1)
        return -EINVAL;
    s = calloc(1, sizeof(*s) + sizeof(s->rings[0]) * (size_t)n_tids);
    if (!s)
        return -ENOMEM;
    for (int i = 0; i < n_tids; i++) {
        int fd = open_fault_event(tids[i], period);
        int rc;

        if (fd < 0) {
            tid_status[i] = -errno;
            if (errno == ESRCH)
                continue;
            first_error = -errno;
            goto fail;
        }
        rc = map_ring(&s->rings[s->n_rings], fd, pages);
        if (rc < 0) {
            close(fd);
            tid_status[i] = first_error = rc;
            goto fail;
        }
        tid_status[i] = 0;
        s->capacity += (int64_t)(s->rings[s->n_rings].data_size /
                                 (sizeof(struct perf_event_header) + sizeof(struct fault_sample)));
        s->n_rings++;
    }
    if (s->n_rings == 0)
        goto fail;
    *out = s;
    return 0;
fail:
    ane_fault_sampler_close(s);
    return first_error;
}

int64_t ane_fault_sampler_capacity(struct ane_fault_sampler *sampler)
{
    return sampler->capacity;
}

/* Copy len bytes at ring position pos, which may wrap around the end. */
static void ring_copy(const struct fault_ring *ring, uint64_t pos, void *dst, size_t len)
{
    size_t at = (size_t)(pos & (ring->data_size - 1));
    size_t first = len < ring->data_size - at ? len : ring->data_size - at;

    memcpy(dst, ring->data + at, first);
    memcpy((char *)dst + first, ring->data, len - first);
}

int64_t ane_fault_sampler_read(struct ane_fault_sampler *sampler, int *tids,
                               uint64_t *addrs, int *cpus, int64_t capacity,
                               int64_t *lost)
{
    int64_t n = 0;

    for (int i = 0; i < sampler->n_rings; i++) {
        struct fault_ring *ring = &sampler->rings[i];
        uint64_t head = __atomic_load_n(&ring->meta->data_head, __ATOMIC_ACQUIRE);
        uint64_t tail = ring->meta->data_tail;

        while (tail < head) {
            struct perf_event_header header;

            ring_copy(ring, tail, &header, sizeof(header));
            if (header.size < sizeof(header))
                break;
            if (header.type == PERF_RECORD_SAMPLE) {
                struct fault_sample sample;

                if (n == capacity)
                    break;
                ring_copy(ring, tail + sizeof(header), &sample, sizeof(sample));
                tids[n] = (int)sample.tid;
                addrs[n] = sample.addr;
                cpus[n] = (int)sample.cpu;
                n++;
            } else if (header.type == PERF_RECORD_LOST) {
                struct lost_record record;

                ring_copy(ring, tail + sizeof(header), &record, sizeof(record));
                *lost += (int64_t)record.lost;
            }
            tail += header.size;
        }
        __atomic_store_n(&ring->meta->data_tail, tail, __ATOMIC_RELEASE);
    }
    return n;
}
