/*
 * numa_ext: the compiled bottom of autonumad's I/O layer (built as
 * autonumad._numa_ext by cext/build_numa_ext.py, wrapped by
 * autonumad/kernel/numa_calls.py).
 *
 * Every entry point is coarse: one call handles a whole list of pages, a whole
 * set of ranges or a whole buffer.  Functions return plain values or fill the
 * caller's arrays; failures of the whole call come back as -errno, never as a
 * message on stderr.  Per-page outcomes (a node id or -errno per page) go into
 * the caller's status arrays.  The ane_ prefix ("autonumad NUMA extension")
 * keeps these names apart from libnuma's numa_ ones.
 *
 * The part between the cffi-cdef markers is fed to cffi's cdef() verbatim, so it
 * holds only declarations that cffi's parser accepts.
 */
#ifndef AUTONUMAD_NUMA_EXT_H
#define AUTONUMAD_NUMA_EXT_H

#include <stdint.h>

/* cffi-cdef-begin */

/* Node of each of `count` pages of process `pid` (0 = the caller): status[i] is
 * the node id or a negative errno (-ENOENT not present, -EFAULT unmapped or the
 * zero page; kernel versions differ, see numa_calls.py).  Queries the kernel in
 * batches.  Returns 0 or -errno. */
int ane_page_nodes(int pid, const uint64_t *addrs, int64_t count, int *status);

/* Move each page addrs[i] of process `pid` to nodes[i] (MPOL_MF_MOVE, or
 * MPOL_MF_MOVE_ALL if move_all).  status[i] afterwards: the node the page is on
 * or a negative errno (-EBUSY, -ENOMEM, -EACCES, -EFAULT, -ENOENT).  Where the
 * kernel gave up on part of a batch the pages of that batch are queried again,
 * so a page it could not move shows the node it stayed on.  Returns 0 or -errno
 * (e.g. -ENODEV for a target node without memory, -EACCES for one outside the
 * target's cpuset). */
int ane_move_pages(int pid, const uint64_t *addrs, int64_t count,
                   const int *nodes, int *status, int move_all);

/* Where ane_move_ranges stopped, and what it did, range by range. */
struct ane_range_moves {
    int64_t range;      /* in: the range to start in; out: the range to resume in (n_ranges: all done) */
    uint64_t addr;      /* in: the address to start at in it (0: its start); out: where to resume */
    int64_t tried;      /* out: pages found on from_node and handed to the kernel */
    int64_t moved;      /* out: of those, pages now on to_node (their addresses: moved_addrs) */
};

/* The mover's hot loop: the pages of ranges [starts[r], ends[r]) of process `pid`
 * that sit on from_node go to to_node, range after range from the position in
 * `pos`, at most `limit` pages (the rate limit's grant), in batches of status
 * queries and moves (MPOL_MF_MOVE, or MPOL_MF_MOVE_ALL if move_all); with the
 * process's pagemap readable, only pages present and (unless move_all) its own
 * alone are queried and tried (a page shared since a fork answers -EACCES).  Per range,
 * tried[r] and moved[r] grow by the pages handed to the kernel and those that
 * moved; each page left behind with a negative status -e counts in
 * status_counts[e] (e < n_status_counts; others in status_counts[0]); the
 * addresses moved go to moved_addrs (room for `limit`), so that a move found
 * mistaken can be undone.  `pos` says where to resume.  Returns 0 or -errno for
 * a whole call that failed (-ESRCH: process gone). */
int ane_move_ranges(int pid, const uint64_t *starts, const uint64_t *ends, int64_t n_ranges,
                    int from_node, int to_node, int64_t limit, int move_all,
                    struct ane_range_moves *pos, int64_t *tried, int64_t *moved,
                    int64_t *status_counts, int n_status_counts, uint64_t *moved_addrs);

/* migrate_pages(2): move every page of `pid` on from_nodes to to_nodes.
 * Returns the number of pages that could not be moved, or -errno. */
int64_t ane_migrate_process_pages(int pid, const int *from_nodes, int n_from,
                                  const int *to_nodes, int n_to);

/* Node of a CPU, or -errno (-EINVAL for a CPU that does not exist). */
int ane_node_of_cpu(int cpu);

/* CPU the calling thread runs on, or -errno. */
int ane_current_cpu(void);

/* Highest node id of this machine (libnuma's numa_max_node). */
int ane_max_node(void);

/* 1 if the kernel has NUMA system calls, else 0. */
int ane_numa_available(void);

/* MPOL_BIND to one node / MPOL_DEFAULT, for the calling thread.  0 or -errno. */
int ane_set_membind(int node);
int ane_reset_mempolicy(void);

/* Totals of one ane_scan_ranges call. */
struct ane_scan_totals {
    int64_t sampled;    /* pages queried */
    int64_t absent;     /* of which not present (-ENOENT) */
    int64_t errors;     /* of which any other negative status (-EFAULT ...) */
    int64_t off_node;   /* of which present on a node not in local_nodes */
    int64_t n_off_out;  /* entries written to off_addrs / off_nodes */
};

/* The sampling scanner.  For each range [starts[r], ends[r]) of process `pid`,
 * take every stride_pages-th page from a random start offset in
 * [0, stride_pages) (every page when stride_pages is 1), query the nodes of the
 * sampled pages in batches and count them:
 *   range_node_pages[r * n_nodes + node] += 1 for each sampled present page;
 *   totals as described above;
 *   off_addrs / off_nodes: up to max_off sampled pages present on a node not in
 *   local_nodes (a bit mask, bit n for node n; none when it is 0; nodes from 64
 *   up are never local), chosen uniformly among all such pages (reservoir
 *   sampling), in no particular order.
 * Start offsets come from a generator seeded by `seed`, one per range, so every
 * page has the same chance 1/stride_pages of being sampled (systematic
 * sampling).  Placement that repeats with a period sharing no factor with the
 * stride (interleaving over k nodes, with the caller's choice of stride) is
 * counted within one sample per range, without binomial noise.
 * Pages that turn out unmapped count in `errors`.
 * Returns 0, or -errno when the whole query fails (-ESRCH, -EPERM, -EINVAL
 * for a process without memory, -ENOMEM). */
int ane_scan_ranges(int pid, const uint64_t *starts, const uint64_t *ends,
                    int64_t n_ranges, int64_t stride_pages, uint64_t seed,
                    uint64_t local_nodes, int64_t *range_node_pages, int n_nodes,
                    uint64_t *off_addrs, int *off_nodes, int64_t max_off,
                    struct ane_scan_totals *totals);

/* Over buf[offset, offset + length), word by word (64-bit words, offsets
 * relative to buf): if check_seed_given, count the words that differ from
 * pattern(check_seed, word index); then write pattern(write_seed, word index).
 * Returns the number of mismatches. */
int64_t ane_sweep(char *buf, int64_t offset, int64_t length,
                  uint64_t write_seed, int check_seed_given, uint64_t check_seed);

/* Page-fault sampling of given threads (perf software events, one per thread,
 * each with a ring buffer of `pages` data pages, a power of two). */
struct ane_fault_sampler;

/* Open events on the threads tids[0..n_tids), sampling one fault in every
 * `period` (>= 1).  tid_status[i] is 0 when the thread is watched, -ESRCH
 * when it has gone (skipped).  Returns 0 and sets *out, or -errno if no
 * thread could be watched or perf refused (-EACCES, -ENOSYS ...). */
int ane_fault_sampler_open(const int *tids, int n_tids, int pages, int64_t period,
                           int *tid_status, struct ane_fault_sampler **out);

/* Largest number of samples one ane_fault_sampler_read can return. */
int64_t ane_fault_sampler_capacity(struct ane_fault_sampler *sampler);

/* Drain every ring: fill tids/addrs/cpus with up to `capacity` samples and add
 * the number of samples the kernel dropped (rings full) to *lost.  Returns the
 * number of samples written. */
int64_t ane_fault_sampler_read(struct ane_fault_sampler *sampler, int *tids,
                               uint64_t *addrs, int *cpus, int64_t capacity,
                               int64_t *lost);

void ane_fault_sampler_close(struct ane_fault_sampler *sampler);

/* cffi-cdef-end */

#endif
