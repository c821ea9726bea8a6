/* fastreg's own thread pool for the elementwise kernels (fr_ew_run, csrc/elementwise.h) and the
 * Philox stream's tiles (fr_run_tiles, csrc/dropout.c).
 *
 * Why not OpenMP there.  fastreg started GNU OpenMP with the passive wait policy (its threads
 * slept between regions, so they never spun away a busy machine; now a short spin,
 * fastreg._threads.bounded_openmp_spin, since torch shares that runtime), and on the VMs this
 * project runs on, waking a sleeping thread costs the waker 13-15 us in the futex syscall alone
 * (an inter-processor interrupt to a halted vCPU) and the region 60-100 us in all.  So mid-size
 * ops ran serially, 2.5-3.5x slower than torch's spinning threads; and OpenMP's runtime, its
 * policy and its fork behaviour are shared with every other library in the process.  This pool's workers spin for a
 * bounded time after each job (fr_pool_set_spin_ns, default from fastreg._threads.POOL_SPIN_US),
 * then sleep; a job that comes while they spin ("hot") costs no wake, and the Python plan gives
 * the smaller grain then (fr_set_pool_threads).
 *
 * A job is ntasks tasks, split into one contiguous chunk per participant (the caller is
 * participant 0): each thread runs its own chunk first, so from call to call it touches the
 * same part of the arrays, which stays in its own L2 (measured, l2_grad on 1e5 float32 with a
 * hot worker: 7.6 -> 4.7 us; with tasks handed out in one shared order, 7.1 us).  Then it
 * steals from the other chunks.  The caller waits only for tasks that another thread has
 * started: a worker that the OS runs late finds its chunk taken and does nothing, so a busy
 * machine makes a job serial rather than stalled behind a descheduled thread (one preempted in
 * the middle of a task still makes the caller wait for it; the pool then backs off, below).
 *
 * Chunk p's state is one 64-bit word, generation (24 bits) | end (20) | next (20); a task is
 * claimed by a compare-and-swap that also checks the generation, so a late worker can never run
 * a task of a later job.  Results do not depend on who runs a task (the kernels are elementwise
 * over disjoint ranges).
 *
 * Borrowing the OpenMP team.  When torch loaded GNU OpenMP first (fastreg shares that runtime:
 * the same soname), the team's threads spin for milliseconds after each of torch's regions (GNU's
 * default spin; 3.6-9 ms on this project's VMs), on the very cores the pool's workers need: the
 * workers miss every job and the pool runs serially, while a region on that spinning team would
 * start at once.  So after missed jobs, where that team lingers (fr_pool_set_omp_borrow, from
 * fastreg._threads.openmp_team_lingers) and its thread was running through the misses
 * (fr_borrow_decide), the calling thread's jobs run on its OpenMP team (fr_pool_omp) for as long
 * as the team answers at once.  Measured, l2_grad on 1e5 float32 taking turns with torch ops in
 * one process (torch imported first): a median 14.9 us on the pool, 10.2 us borrowing.
 *
 * Only one job runs at a time: a call made while another Python thread's job holds the pool
 * runs serially on its own thread.  In a forked child the pool's threads do not exist: the
 * child's first job starts new ones (fastreg's Python side runs everything serially there
 * anyway).  Linux only (futex); elsewhere jobs run as OpenMP loops, as before the pool.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "fastreg.h"
#include "fr_pool.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__linux__)
#define FR_POOL_OK 1
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define fr_relax() _mm_pause()
#else
#define fr_relax() __asm__ __volatile__("" ::: "memory")
#endif

#define FR_POOL_MAX 64         /* participants (caller + workers) */
#define FR_GEN_MASK 0xFFFFFFu  /* 24 bits of generation in a chunk word */
#define FR_IDX_MASK 0xFFFFFu   /* 20 bits of end / next */
/* A spinning worker that finds this much time between two of its checks (every 256 pauses,
 * some 10 us apart) was preempted: it sleeps at once.  After FR_POOL_MISSES jobs in a row that
 * found the workers spinning and that none of them took part in, when woken workers have not run
 * FR_POOL_WAKE_NS after the wake, or when a caller has waited FR_POOL_PREEMPTED_NS for a task
 * that a worker started, the cores are oversubscribed (a busy machine, another runtime's spinning
 * threads, fewer CPUs than threads), and the pool backs off: workers sleep right after a job,
 * and fr_pool_burst says no (the Python plan's count for sleeping workers applies).
 *
 * How long depends on what it cost.  A stall (the caller waited for a preempted worker) costs
 * the call a time slice: 1 ms at first, twice as long at each back-off after that, up to 256 ms
 * (a lasting load then costs one probe per 256 ms), and back to 1 ms after FR_POOL_HITS jobs in
 * a row that a worker took part in without a stall (at 10-100 us a job, 0.04-0.4 s of calls
 * that all went well).  Missed jobs and late wakes cost nothing but the parallelism (the caller
 * ran every task itself) and a wake per probe (13-15 us): they come from threads that hold the
 * other cores for a while, as torch's OpenMP team does after each of its regions (GNU's default
 * spin, 3.6-9 ms here, when torch loaded the runtime first): 1 ms, doubling up to
 * FR_POOL_MISS_MAX_NS, and back to 1 ms after FR_POOL_MISS_HITS good jobs in a row.  With the
 * stalls' 256 ms for them, calls that alternate with torch's ran serially for good (l2_grad on
 * 1e5 float32, one process, torch imported first: a median 15.3 us against 10.1).  */
#define FR_POOL_PREEMPTED_NS 200000
#define FR_POOL_MISSES 8
/* woken workers that have not run this long after the wake (60-100 us is usual here) */
#define FR_POOL_WAKE_NS 1000000
#define FR_POOL_BACKOFF_MIN_NS 1000000
#define FR_POOL_BACKOFF_MAX_NS 256000000
#define FR_POOL_HITS 4096
#define FR_POOL_MISS_MAX_NS 4000000
#define FR_POOL_MISS_HITS 64
/* Borrowing the OpenMP team (fr_pool_omp): a borrowed team whose second thread started this
 * late, or whose region's end made the caller wait this long for a thread, had no CPU: no
 * borrowing for 16 ms, twice as long each time after that, up to 1 s, and back to 16 ms after
 * FR_POOL_OMP_GOOD borrowed jobs in a row that went well.  One late region after
 * FR_POOL_OMP_FORGIVE good ones in a row (counted across borrowing periods: the thread's
 * record with its team) is let pass: on a machine shared with other processes
 * a thread loses its CPU now and then, and a pause that follows costs every call in it the
 * parallelism (l2_grad on 1e5 float32 beside torch: 13.6 us serial, 9.3 borrowed, so a 16 ms
 * pause at a call every 20 us costs 3.4 ms against a late region's 20-100 us); a second one
 * that soon means the team's threads have no CPU, and the pause comes then. */
#define FR_POOL_OMP_LATE_NS 20000
#define FR_POOL_OMP_FORGIVE 64
/* Borrowing again at once (fr_borrow_probe): the team's thread ran for >= 75% of a window of
 * FR_POOL_PROBE_MIN_NS to FR_POOL_PROBE_MAX_NS between two of the calling thread's jobs. */
#define FR_POOL_PROBE_MIN_NS 30000
#define FR_POOL_PROBE_MAX_NS 2000000
#define FR_POOL_OMP_OFF_MIN_NS 16000000
#define FR_POOL_OMP_OFF_MAX_NS 1000000000
#define FR_POOL_OMP_GOOD 1024

typedef struct {
    _Alignas(64) uint64_t word;  /* gen:24 | end:20 | next:20 */
} fr_chunk;

static struct {
    fr_chunk chunk[FR_POOL_MAX];
    _Alignas(64) uint32_t gen;  /* futex word: the newest job's generation */
    int sleepers;               /* workers in (or entering) futex_wait */
    _Alignas(64) uint32_t done; /* tasks finished by workers in this job */
    fr_task_fn fn;
    void *ctx;
    int nt;                     /* participants of the newest job */
    int nworkers;               /* started, ids 1..nworkers */
    int64_t spin_ns;            /* < 0: spin forever; 0: sleep at once */
    int64_t jobs[2];            /* jobs run [cold, hot] (for tests) */
    int64_t backoffs[3];        /* [spinning workers preempted (they sleep), back-offs after
                                 * missed jobs, after a call stalled] */
    int64_t last_end_ns;        /* when the last call that asked fr_pool_burst ended */
    int64_t backoff_until_ns;   /* no hot jobs, and no spinning, before this time */
    int64_t backoff_ns[2];      /* the next back-off's length after missed jobs / a stall
                                 * (doubles, up to FR_POOL_MISS_MAX_NS / FR_POOL_BACKOFF_MAX_NS) */
    int hits;                   /* jobs in a row that a worker took part in */
    int misses;                 /* hot jobs in a row in which no worker ran a task */
    int64_t woken_ns;           /* when sleeping workers were woken, until one runs; 0: none */
    int omp_borrow;             /* borrow the OpenMP team after missed jobs (fr_borrow_decide) */
    const void *miss_owner;     /* the thread (its T) whose job began the run of missed jobs, */
    int64_t miss_ns, miss_cpu;  /* when, and its team thread's CPU time then (-1: unknown) */
    int64_t omp_jobs;           /* jobs run on the OpenMP team (for tests) */
    int64_t omp_late;           /* of them, those that started or ended late (let pass or not) */
    pthread_mutex_t lock;       /* held by the caller of the running job */
} P = {.spin_ns = 50000, .lock = PTHREAD_MUTEX_INITIALIZER, .last_end_ns = INT64_MIN / 2,
     .backoff_ns = {FR_POOL_BACKOFF_MIN_NS, FR_POOL_BACKOFF_MIN_NS}, .miss_cpu = -1};

/* The calling thread's borrowing of its OpenMP team (GNU OpenMP keeps a team per thread that
 * starts regions, so this is per thread too). */
static _Thread_local struct {
    clockid_t clock;    /* the CPU-time clock of the team's second thread, */
    int known;          /* once a borrowed region has run (0: not yet, or that thread is gone) */
    int64_t until_ns;   /* jobs run on the team before this time */
    int64_t off_until_ns, off_ns;  /* no borrowing before this time; the next such pause */
    int good;           /* borrowed jobs in a row that went well */
    int forced;         /* borrowing asked for by fr_pool_borrow_ns (tests), whatever omp_borrow */
    int late;           /* borrowed jobs still to count as late (fr_pool_borrow_late, tests) */
    int64_t probe_ns, probe_cpu;  /* fr_borrow_probe's last sample: when, the team thread's CPU time */
} T = {.off_ns = FR_POOL_OMP_OFF_MIN_NS};

#define LOAD(x, mo) __atomic_load_n(&(x), __ATOMIC_##mo)
#define STORE(x, v, mo) __atomic_store_n(&(x), (v), __ATOMIC_##mo)

int fr_pool_set_spin_ns(int64_t ns)
{
    STORE(P.spin_ns, ns, RELAXED);
    /* a new setting starts without a back-off */
    STORE(P.backoff_until_ns, 0, RELAXED);
    STORE(P.backoff_ns[0], FR_POOL_BACKOFF_MIN_NS, RELAXED);
    STORE(P.backoff_ns[1], FR_POOL_BACKOFF_MIN_NS, RELAXED);
    return FR_OK;
}

/* The calling thread borrows nothing now, and no pause holds back its next borrowing. */
static void fr_borrow_clear(void)
{
    T.until_ns = T.off_until_ns = 0;
    T.forced = T.late = 0;
    T.off_ns = FR_POOL_OMP_OFF_MIN_NS;
    T.probe_ns = 0;   /* fr_borrow_probe's next sample starts afresh */
}

int fr_pool_set_omp_borrow(int on)
{
    STORE(P.omp_borrow, on != 0, RELAXED);
    fr_borrow_clear();
    return FR_OK;
}

void fr_pool_stats(int64_t *out)
{
    out[5] = LOAD(P.omp_jobs, RELAXED);
    out[6] = LOAD(P.omp_late, RELAXED);
    out[0] = LOAD(P.jobs[0], RELAXED);
    out[1] = LOAD(P.jobs[1], RELAXED);
    out[2] = LOAD(P.backoffs[0], RELAXED);
    out[3] = LOAD(P.backoffs[1], RELAXED);
    out[4] = LOAD(P.backoffs[2], RELAXED);
}

/* The tasks of a job, in order, on the calling thread. */
static void fr_run_serial(fr_task_fn fn, void *ctx, size_t ntasks)
{
    for (size_t t = 0; t < ntasks; t++)
        fn(ctx, t);
}

#ifdef FR_POOL_OK

/* Whether the calling thread's jobs run on its OpenMP team now. */
static int fr_borrowing(int64_t now)
{
    return now < T.until_ns && (T.forced || LOAD(P.omp_borrow, RELAXED));
}

/* Backs off (see FR_POOL_PREEMPTED_NS) from now; why: 1 missed jobs, 2 a call that waited for
 * a preempted worker's task (backoffs[0] counts the spinning workers that were preempted).
 * Called by workers and by callers: the races between them only change a length. */
static void fr_back_off(int64_t now, int why)
{
    if (LOAD(P.spin_ns, RELAXED) < 0)
        return;  /* told to spin forever (a machine of the user's own): no back-off either */
    const int stall = why == 2;
    const int64_t max = stall ? FR_POOL_BACKOFF_MAX_NS : FR_POOL_MISS_MAX_NS;
    int64_t len = LOAD(P.backoff_ns[stall], RELAXED);
    if (now + len > LOAD(P.backoff_until_ns, RELAXED))  /* never shortens a longer one */
        STORE(P.backoff_until_ns, now + len, RELAXED);
    STORE(P.backoff_ns[stall], len < max ? 2 * len : len, RELAXED);
    STORE(P.hits, 0, RELAXED);
    __atomic_add_fetch(&P.backoffs[why], 1, __ATOMIC_RELAXED);
}

/* Claims a task of chunk p in job generation g (24 bits); -1 if none is left. */
static int64_t fr_claim(int p, uint32_t g)
{
    uint64_t c = LOAD(P.chunk[p].word, ACQUIRE);
    for (;;) {
        if ((uint32_t)(c >> 40) != g)
            return -1;
        uint64_t end = (c >> 20) & FR_IDX_MASK, next = c & FR_IDX_MASK;
        if (next >= end)
            return -1;
        if (__atomic_compare_exchange_n(&P.chunk[p].word, &c, c + 1, 1, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return (int64_t)next;
    }
}

/* Participant id runs the tasks of its own chunk, then of the others; returns how many. */
static uint32_t fr_participate(int id, uint32_t g, int nt)
{
    uint32_t ran = 0;
    for (int k = 0; k < nt; k++) {
        int p = (id + k) % nt;
        int64_t t;
        while ((t = fr_claim(p, g)) >= 0) {
            P.fn(P.ctx, (size_t)t);  /* fn, ctx: the job of g, which cannot end before this */
            ran++;
        }
    }
    return ran;
}

static void *fr_worker(void *arg)
{
    const int id = (int)(intptr_t)arg;
    uint32_t seen = LOAD(P.gen, ACQUIRE);
    int idle = 0;  /* not a participant of the last job: sleep at once */
    for (;;) {
        int64_t start = fr_now_ns(), prev = start;
        uint32_t g;
        unsigned k = 0;
        while ((g = LOAD(P.gen, ACQUIRE)) == seen) {
            fr_relax();
            if ((++k & 255) != 0)
                continue;
            /* give the CPU to any other thread that wants it (the caller itself, when the OS
             * woke this worker on the caller's CPU): spinning only takes idle time */
            sched_yield();
            int64_t now = fr_now_ns(), spin = idle ? 0 : LOAD(P.spin_ns, RELAXED);
            /* this thread lost its CPU while spinning (the yield above let another thread
             * run): the cores are wanted now (another process, torch's threads between two
             * fastreg calls); spinning would take time they need, so sleep.  No back-off:
             * that is for what delays calls (csrc comment at FR_POOL_PREEMPTED_NS). */
            int preempted = now - prev > FR_POOL_PREEMPTED_NS;
            if (preempted && spin >= 0)
                __atomic_add_fetch(&P.backoffs[0], 1, __ATOMIC_RELAXED);
            prev = now;
            if (spin >= 0 && (preempted || now - start >= spin
                              || now < LOAD(P.backoff_until_ns, RELAXED))) {
                __atomic_add_fetch(&P.sleepers, 1, __ATOMIC_SEQ_CST);
                /* returns at once if gen moved on since `seen` (the kernel compares) */
                syscall(SYS_futex, &P.gen, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
                __atomic_sub_fetch(&P.sleepers, 1, __ATOMIC_SEQ_CST);
                STORE(P.woken_ns, 0, RELAXED);
                start = prev = fr_now_ns();
            }
        }
        seen = g;
        int nt = LOAD(P.nt, RELAXED);  /* may be a later job's: fr_claim checks generations */
        idle = id >= nt;
        if (id < nt) {
            uint32_t ran = fr_participate(id, g & FR_GEN_MASK, nt);
            if (ran)
                __atomic_add_fetch(&P.done, ran, __ATOMIC_RELEASE);
        }
    }
    return NULL;
}

static void fr_pool_after_fork_child(void)
{
    /* the workers are not in the child; a new job there starts new ones */
    pthread_mutex_init(&P.lock, NULL);
    memset(P.chunk, 0, sizeof P.chunk);  /* a job cut short by the fork: nothing to claim */
    P.nworkers = 0;
    P.sleepers = 0;
    P.woken_ns = 0;
    P.misses = P.hits = 0;
    P.backoff_until_ns = 0;
    P.backoff_ns[0] = P.backoff_ns[1] = FR_POOL_BACKOFF_MIN_NS;
    /* nor does GNU OpenMP's team (this is the thread that forked) */
    fr_borrow_clear();
    T.known = T.good = 0;
    P.miss_owner = NULL;
}

static pthread_once_t fr_pool_once = PTHREAD_ONCE_INIT;

static void fr_pool_init(void) { pthread_atfork(NULL, NULL, fr_pool_after_fork_child); }

/* Workers spinning now (or running a job): the ones that a job needs no wake for.  Workers
 * outside a job's count sleep at once, so after a job of many threads, jobs of fewer find
 * some asleep and the rest spinning. */
static int fr_pool_spinning(void)
{
    int n = LOAD(P.nworkers, RELAXED) - LOAD(P.sleepers, RELAXED);
    return n > 0 ? n : 0;
}

/* Whether enough workers spin now for a job of nt threads (it would cost no wake). */
static int fr_pool_hot(int nt) { return nt > 1 && fr_pool_spinning() >= nt - 1; }

static int fr_borrow_probe(int64_t now);

int fr_pool_burst(int nt)
{
    int64_t now = fr_now_ns();
    if (nt > 1 && (fr_borrowing(now) || fr_borrow_probe(now)))
        return 1;  /* borrowing the OpenMP team: fr_pool_omp runs the job, no wake */
    if (now < LOAD(P.backoff_until_ns, RELAXED))
        return 0;
    if (fr_pool_hot(nt))
        return 1;
    /* workers woken by an earlier call and not running yet (60-100 us and more on this VM):
     * a job now would find none of them, so run serially until they come */
    int64_t woken = LOAD(P.woken_ns, RELAXED);
    if (woken != 0 && now - woken <= FR_POOL_WAKE_NS)
        return 0;
    return now - LOAD(P.last_end_ns, RELAXED) < FR_POOL_BURST_NS;
}

void fr_pool_call_ended(void) { STORE(P.last_end_ns, fr_now_ns(), RELAXED); }

int fr_pool_borrow_ns(int64_t ns, int forced)
{
    pthread_once(&fr_pool_once, fr_pool_init);  /* the fork handler resets the borrowing */
    T.until_ns = ns > 0 ? fr_now_ns() + ns : 0;
    T.forced = ns > 0 && forced;
    T.off_until_ns = 0;
    T.good = 0;   /* a late region pauses the borrowing at once (tests) */
    return FR_OK;
}

int fr_pool_borrow_late(int n, int good)
{
    T.late = n > 0 ? n : 0;
    T.good = good > 0 ? good : 0;
    return FR_OK;
}

int fr_pool_borrowing(void) { return fr_borrowing(fr_now_ns()); }

/* Starts workers up to nt - 1 (called with the lock held); returns the participants
 * possible. */
static int fr_pool_grow(int nt)
{
    pthread_once(&fr_pool_once, fr_pool_init);
    if (nt > FR_POOL_MAX)
        nt = FR_POOL_MAX;
    while (P.nworkers < nt - 1) {
        pthread_t th;
        pthread_attr_t attr;
        if (pthread_attr_init(&attr) != 0)
            break;
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 << 10);
        int rc = pthread_create(&th, &attr, fr_worker, (void *)(intptr_t)(P.nworkers + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break;
        STORE(P.nworkers, P.nworkers + 1, RELAXED);
    }
    return P.nworkers + 1 < nt ? P.nworkers + 1 : nt;
}

/* The CPU time of the calling thread's OpenMP team thread (ns), or -1 (not known yet, or that
 * thread has exited: then it is forgotten). */
static int64_t fr_team_cpu_ns(void)
{
    struct timespec ts;
    if (!T.known)
        return -1;
    if (clock_gettime(T.clock, &ts) != 0) {
        T.known = 0;
        return -1;
    }
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Whether the team's thread, whose CPU time was cpu0 at t0 and is cpu at now, ran for >= 75% of
 * that time: it spins (a region starts at once), where a thread that sleeps or waits for a CPU
 * would make the region wait. */
static int fr_team_ran(int64_t cpu0, int64_t t0, int64_t cpu, int64_t now)
{
    return (cpu - cpu0) * 4 >= (now - t0) * 3;
}

/* After FR_POOL_MISSES missed jobs (the pool backs off until `until`): borrow the calling
 * thread's OpenMP team for that time when its thread was running through the misses
 * (fr_team_ran), or, while that thread is not known (a borrowed region with a second thread
 * learns it; a team of one, as under OMP_THREAD_LIMIT=1, never does and is harmless: the
 * caller runs every task), without that evidence. */
static void fr_borrow_decide(int64_t now, int64_t until)
{
    if (!LOAD(P.omp_borrow, RELAXED) || now < T.off_until_ns)
        return;
    if (T.known) {
        int64_t cpu = fr_team_cpu_ns();
        if (P.miss_owner != (const void *)&T || cpu < 0 || P.miss_cpu < 0
            || !fr_team_ran(P.miss_cpu, P.miss_ns, cpu, now))
            return;
    }
    T.until_ns = until;
}

/* Borrowing again without missed jobs first.  Where the calling thread has borrowed its team
 * before (its thread is known) and may now, each job while it does not borrow samples the
 * team thread's CPU time (a system call: at most one per FR_POOL_PROBE_MIN_NS); when that
 * thread ran for >= 75% of the time since the last sample, it spins (as after each of torch's
 * regions), and the jobs run on the team from this one.  In a training loop, after each torch
 * forward and backward of a few ms (which outlasts the borrowing's window), the first calls
 * then found the pool's workers without a CPU, ran serially and waited for FR_POOL_MISSES
 * missed jobs (l2_grad on 1e5 float32, 20 calls after each 5 ms of torch matmuls: the calls
 * at positions 2-11 took 13-18 us, borrowed ones 9.1). */
static int fr_borrow_probe(int64_t now)
{
    if (!T.known || !LOAD(P.omp_borrow, RELAXED) || now < T.off_until_ns)
        return 0;
    const int64_t since = now - T.probe_ns;
    if (since < FR_POOL_PROBE_MIN_NS)
        return 0;
    const int64_t cpu = fr_team_cpu_ns();
    if (cpu < 0)
        return 0;
    const int spins = since <= FR_POOL_PROBE_MAX_NS
                      && fr_team_ran(T.probe_cpu, T.probe_ns, cpu, now);
    T.probe_ns = now;
    T.probe_cpu = cpu;
    if (spins)
        T.until_ns = now + FR_POOL_MISS_MAX_NS;
    return spins;
}


/* A job on the calling thread's OpenMP team (held: P.lock), split into one contiguous chunk per
 * participant as on the pool (fr_participate): each thread runs its own chunk first, so from
 * call to call it touches the part of the arrays in its own L2, then takes tasks from the other
 * chunks, so that a thread that starts late finds them taken.  A team that starts late
 * or ends late (FR_POOL_OMP_LATE_NS) was asleep, or its threads have no CPU: borrowing it then
 * costs more than it gives (a wake; the region's end waits for every thread, a time slice on a
 * busy machine), so it stops (FR_POOL_OMP_OFF_MIN_NS). */
static void fr_pool_omp(int nt, fr_task_fn fn, void *ctx, size_t ntasks)
{
    struct {
        _Alignas(64) size_t next;
        size_t end;
    } chunk[FR_POOL_MAX];
    const int parts = nt < FR_POOL_MAX ? nt : FR_POOL_MAX;
    for (int p = 0; p < parts; p++) {
        chunk[p].next = ntasks * (size_t)p / (size_t)parts;
        chunk[p].end = ntasks * (size_t)(p + 1) / (size_t)parts;
    }
    int64_t t0 = fr_now_ns(), started = 0, done = 0;
    clockid_t clock;
    int got = 0;
#ifdef _OPENMP
    /* a team of the runtime's own size (torch.set_num_threads sets it): GNU OpenMP ends the
     * idle threads of a larger team when a smaller one starts, and its owner's next region
     * would create them again; the extra threads find the tasks taken */
    const int team = omp_get_max_threads();
    if (team > nt)
        nt = team;
#endif
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        const int me = omp_get_thread_num();
#else
        const int me = 0;
#endif
        if (me == 1) {
            started = fr_now_ns();
            got = pthread_getcpuclockid(pthread_self(), &clock) == 0;
        }
        for (int k = 0; k < parts; k++) {
            const int p = (me + k) % parts;
            size_t t;
            /* a claim past the end (two threads racing for the last task) is harmless */
            while ((t = __atomic_fetch_add(&chunk[p].next, 1, __ATOMIC_RELAXED)) < chunk[p].end)
                fn(ctx, t);
        }
        if (me == 0)
            done = fr_now_ns();
    }
    int64_t end = fr_now_ns();
    __atomic_add_fetch(&P.omp_jobs, 1, __ATOMIC_RELAXED);
    if (got) {
        T.clock = clock;
        T.known = 1;
    }
    /* late: a team thread started 20 us after the region, or the caller waited 20 us at its end
     * for a thread in a task (tasks take 1-2 us: that thread lost its CPU) */
    int late = (started != 0 && started - t0 > FR_POOL_OMP_LATE_NS)
               || end - done > FR_POOL_OMP_LATE_NS;
    if (T.late > 0) {
        T.late--;
        late = 1;
    }
    if (late) {
        __atomic_add_fetch(&P.omp_late, 1, __ATOMIC_RELAXED);
        if (T.good >= FR_POOL_OMP_FORGIVE) {  /* the first in a long while: let it pass */
            T.good = 0;
            return;
        }
        T.until_ns = 0;
        T.forced = 0;
        T.off_until_ns = end + T.off_ns;
        T.off_ns = T.off_ns < FR_POOL_OMP_OFF_MAX_NS ? 2 * T.off_ns : T.off_ns;
        T.good = 0;
    } else {
        /* the team answered at once: keep borrowing it while it does (its threads spin after
         * this region too, on the cores the pool's workers would need) */
        if (T.until_ns - end < FR_POOL_MISS_MAX_NS)
            T.until_ns = end + FR_POOL_MISS_MAX_NS;
        if (++T.good >= FR_POOL_OMP_GOOD)
            T.off_ns = FR_POOL_OMP_OFF_MIN_NS;
    }
}

void fr_pool_run(int nt, fr_task_fn fn, void *ctx, size_t ntasks)
{
    if (nt < 2 || ntasks < 2 || ntasks > FR_POOL_MAX_TASKS
        || pthread_mutex_trylock(&P.lock) != 0) {
        fr_run_serial(fn, ctx, ntasks);
        return;
    }
    const int64_t now = fr_now_ns();
    if (fr_borrowing(now) || fr_borrow_probe(now)) {
        fr_pool_omp((size_t)nt > ntasks ? (int)ntasks : nt, fn, ctx, ntasks);
        pthread_mutex_unlock(&P.lock);
        return;
    }
    nt = fr_pool_grow(nt);
    if ((size_t)nt > ntasks)
        nt = (int)ntasks;
    if (nt < 2) {   /* no worker could be started */
        pthread_mutex_unlock(&P.lock);
        fr_run_serial(fn, ctx, ntasks);
        return;
    }
    const int hot = fr_pool_hot(nt);
    P.fn = fn;
    P.ctx = ctx;
    STORE(P.nt, nt, RELAXED);
    STORE(P.done, 0, RELAXED);
    const uint32_t gen = LOAD(P.gen, RELAXED) + 1, g = gen & FR_GEN_MASK;
    for (int p = 0; p < nt; p++) {
        uint64_t lo = (uint64_t)ntasks * p / nt, hi = (uint64_t)ntasks * (p + 1) / nt;
        STORE(P.chunk[p].word, ((uint64_t)g << 40) | (hi << 20) | lo, RELEASE);
    }
    __atomic_store_n(&P.gen, gen, __ATOMIC_SEQ_CST);
    /* wake the sleepers only when the spinning workers are too few for this job (a worker
     * that counted itself spinning here and goes to sleep meanwhile finds gen changed: the
     * kernel's compare in futex_wait returns at once) */
    if (LOAD(P.nworkers, RELAXED) - __atomic_load_n(&P.sleepers, __ATOMIC_SEQ_CST) < nt - 1) {
        /* once per sleep; a wake whose workers have not run FR_POOL_WAKE_NS later means no
         * CPU for them (back off), or a stale stamp (a worker that had counted itself a sleeper
         * but left futex_wait at once, clearing the stamp before this caller's predecessor
         * stored it, sleeps now): wake again */
        int64_t now = fr_now_ns(), woken = LOAD(P.woken_ns, RELAXED);
        if (woken == 0 || now - woken > FR_POOL_WAKE_NS) {
            if (woken != 0)
                fr_back_off(now, 1);
            STORE(P.woken_ns, now, RELAXED);
            syscall(SYS_futex, &P.gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
        }
    }
    const uint32_t mine = fr_participate(0, g, nt);
    /* the tasks left are running on other threads: wait for them */
    int64_t waited_from = 0;
    int stalled = 0;
    for (unsigned k = 1; LOAD(P.done, ACQUIRE) + mine < ntasks; k++) {
        fr_relax();
        if ((k & 1023) == 0) {
            sched_yield();  /* a worker preempted in a task may need this core */
            int64_t now = fr_now_ns();
            if (waited_from == 0)
                waited_from = now;
            else if (!stalled && now - waited_from > FR_POOL_PREEMPTED_NS) {
                /* a worker lost its CPU in the middle of a task: the call waits for the OS
                 * to run it again (a time slice, milliseconds, on a busy machine) */
                stalled = 1;
                fr_back_off(now, 2);
            }
        }
    }
    /* spinning workers that never get to a task are not running (their CPU is taken) */
    if (hot && mine == ntasks) {
        if (P.misses++ == 0) {  /* the first of a run: what the team thread did meanwhile */
            P.miss_owner = &T;
            P.miss_ns = fr_now_ns();
            P.miss_cpu = fr_team_cpu_ns();
        }
    } else if (hot) {
        P.misses = 0;
    }
    if (!stalled && mine < ntasks) {
        int hits = __atomic_add_fetch(&P.hits, 1, __ATOMIC_RELAXED);
        if (hits >= FR_POOL_MISS_HITS)
            STORE(P.backoff_ns[0], FR_POOL_BACKOFF_MIN_NS, RELAXED);
        if (hits >= FR_POOL_HITS)
            STORE(P.backoff_ns[1], FR_POOL_BACKOFF_MIN_NS, RELAXED);
    }
    if (P.misses >= FR_POOL_MISSES) {
        P.misses = 0;
        const int64_t after = fr_now_ns();
        fr_back_off(after, 1);
        fr_borrow_decide(after, LOAD(P.backoff_until_ns, RELAXED));
    }
    __atomic_add_fetch(&P.jobs[hot], 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&P.lock);
}

#else /* no futex: OpenMP (the count for sleeping threads only, fr_pool_burst says no) */

int fr_pool_burst(int nt)
{
    (void)nt;
    return 0;
}

void fr_pool_call_ended(void) {}

int fr_pool_borrow_ns(int64_t ns, int forced)
{
    (void)ns;
    (void)forced;
    return FR_ERR_SIZE;  /* jobs are OpenMP loops here anyway */
}

int fr_pool_borrow_late(int n, int good)
{
    (void)n;
    (void)good;
    return FR_ERR_SIZE;
}

int fr_pool_borrowing(void) { return 0; }

void fr_pool_run(int nt, fr_task_fn fn, void *ctx, size_t ntasks)
{
    if (nt > 1) {
        /* static: one contiguous run of tasks per thread, as the pool's chunks */
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t t = 0; t < (int64_t)ntasks; t++)
            fn(ctx, (size_t)t);
        return;
    }
    fr_run_serial(fn, ctx, ntasks);
}

#endif
