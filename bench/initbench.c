// initbench: measures container inits against each other in one interleaved run.
//
//   initbench table [options] NAME=PATH[,ARG...] ...   print the Markdown table (bench/reaper.sh)
//   initbench orphans-child N RFD WFD                 (internal) child making N orphans
//   initbench receiver WFD                            (internal) child timing SIGUSR1 arrivals
//
// Metrics (see README "The reaper init" > Benchmark):
//   size     file size of PATH
//   startup  wall time of `INIT -- /bin/true` minus that of `/bin/true`, median and p90
//   rss      VmRSS/VmHWM of the init (PID 1 of a new PID namespace) while its child sleeps
//   orphan   the init's own CPU time (/proc/PID/schedstat, ns) per reaped orphan, the init being
//            PID 1 of a new PID namespace and its child making N double-fork orphans
//   latency  kill(init, SIGUSR1) -> the child's sigwaitinfo returns, median and p90
//
// Needs root (CLONE_NEWPID). Written for this project; no code copied from the inits measured.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MAX_INITS 16
#define MAX_ARGS 8

struct init {
    char *name;
    char *argv[MAX_ARGS + 4]; // path, extra args, then "--", command..., NULL
    int nargs;                // path + extra args
    long size;
    double *startup;          // µs samples
    double rss_kb, hwm_kb;
    double ns_per_orphan;
    double wakeups_per_orphan; // voluntary context switches of the init per orphan
    double *latency;          // µs samples
    int nstartup, nlatency;
};

static void die(const char *what) {
    fprintf(stderr, "initbench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// q-quantile (0..1) of n samples (sorts in place).
static double quantile(double *v, int n, double q) {
    if (n == 0) return 0;
    qsort(v, n, sizeof *v, cmp_double);
    int i = (int)(q * (n - 1) + 0.5);
    return v[i];
}

// Reads a whole small file into buf (NUL-terminated); returns length or -1.
static int read_file(const char *path, char *buf, int cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int n = read(fd, buf, cap - 1);
    close(fd);
    if (n < 0) return -1;
    buf[n] = 0;
    return n;
}

// Number of direct children of pid (from /proc/PID/task/PID/children).
static int count_children(pid_t pid) {
    char path[64], buf[65536];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", pid, pid);
    if (read_file(path, buf, sizeof buf) < 0) return -1;
    int n = 0;
    for (char *p = strtok(buf, " \n"); p; p = strtok(NULL, " \n")) n++;
    return n;
}

// Time this process has spent on a CPU (ns), from /proc/PID/schedstat.
static int64_t cpu_ns(pid_t pid) {
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/schedstat", pid);
    if (read_file(path, buf, sizeof buf) < 0) die("read schedstat");
    return strtoll(buf, NULL, 10);
}

// Starts argv as PID 1 of a new PID namespace; returns its pid (in ours).
static pid_t spawn_pid1(char *const argv[]) {
    pid_t pid = syscall(SYS_clone, CLONE_NEWPID | SIGCHLD, NULL, NULL, NULL, NULL);
    if (pid < 0) die("clone(CLONE_NEWPID) (run as root)");
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static void kill_and_wait(pid_t pid) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

// Reads exactly n bytes from fd within timeout_ms; 0 on success.
static int read_timeout(int fd, void *buf, size_t n, int timeout_ms) {
    size_t got = 0;
    while (got < n) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, timeout_ms);
        if (r <= 0) return -1;
        ssize_t k = read(fd, (char *)buf + got, n - got);
        if (k <= 0) return -1;
        got += k;
    }
    return 0;
}

// argv for `INIT -- cmd...` (cmd NULL-terminated).
static void build_argv(struct init *in, char **out, char **cmd) {
    int k = 0;
    for (int i = 0; i < in->nargs; i++) out[k++] = in->argv[i];
    if (cmd) {
        out[k++] = "--";
        while (*cmd && k < MAX_ARGS + 12) out[k++] = *cmd++;
    }
    out[k] = NULL;
}

// ---------------------------------------------------------------- startup
static double time_spawn(char *const argv[], posix_spawn_file_actions_t *fa) {
    int64_t t0 = now_ns();
    pid_t pid;
    if (posix_spawn(&pid, argv[0], fa, NULL, argv, environ) != 0) die("posix_spawn");
    int st;
    waitpid(pid, &st, 0);
    int64_t t1 = now_ns();
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "initbench: %s -- /bin/true failed (status %#x)\n", argv[0], st);
        exit(1);
    }
    return (t1 - t0) / 1000.0;
}

static void bench_startup(struct init *inits, int n, int runs, double *direct) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    char *truecmd[] = {"/bin/true", NULL};
    int warmup = 20;
    for (int r = -warmup; r < runs; r++) {
        // Rotate the order every round so no init always follows the same one.
        for (int j = 0; j <= n; j++) {
            int idx = (j + (r < 0 ? 0 : r)) % (n + 1);
            double us;
            if (idx == n) {
                us = time_spawn(truecmd, &fa);
                if (r >= 0) direct[r] = us;
            } else {
                char *argv[MAX_ARGS + 16];
                build_argv(&inits[idx], argv, truecmd);
                us = time_spawn(argv, &fa);
                if (r >= 0) inits[idx].startup[inits[idx].nstartup++] = us;
            }
        }
    }
    posix_spawn_file_actions_destroy(&fa);
}

// ---------------------------------------------------------------- rss
static long status_kb(pid_t pid, const char *field) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    if (read_file(path, buf, sizeof buf) < 0) return -1;
    char *p = strstr(buf, field);
    return p ? strtol(p + strlen(field) + 1, NULL, 10) : -1;
}

static void bench_rss(struct init *inits, int n, int rounds) {
    double rss[MAX_INITS][64], hwm[MAX_INITS][64];
    char *sleepcmd[] = {"/bin/sleep", "5", NULL};
    for (int r = 0; r < rounds; r++) {
        for (int j = 0; j < n; j++) {
            int i = (j + r) % n;
            char *argv[MAX_ARGS + 16];
            build_argv(&inits[i], argv, sleepcmd);
            pid_t pid = spawn_pid1(argv);
            // Wait until the child runs (the init has forked and is idle).
            int64_t deadline = now_ns() + 5000000000LL;
            while (count_children(pid) < 1 && now_ns() < deadline) usleep(1000);
            usleep(200000);
            rss[i][r] = status_kb(pid, "VmRSS:");
            hwm[i][r] = status_kb(pid, "VmHWM:");
            kill_and_wait(pid);
        }
    }
    for (int i = 0; i < n; i++) {
        inits[i].rss_kb = quantile(rss[i], rounds, 0.5);
        inits[i].hwm_kb = quantile(hwm[i], rounds, 0.5);
    }
}

// ---------------------------------------------------------------- orphans
static int orphans_child(long count, int rfd, int wfd) {
    // Own session for every init: dumb-init starts its child with setsid() and, with
    // CONFIG_SCHED_AUTOGROUP, a new session is a new scheduling group, which changes how often
    // the init gets to run (and so how many orphans it reaps per wake-up). Equal footing for all.
    setsid();
    char c = 'r';
    if (write(wfd, &c, 1) != 1) return 1;
    if (read(rfd, &c, 1) != 1) return 1; // 'g'
    for (long i = 0; i < count; i++) {
        pid_t p = fork();
        if (p < 0) {
            usleep(1000);
            i--;
            continue;
        }
        if (p == 0) {
            if (fork() == 0) _exit(0); // the orphan
            _exit(0);
        }
        waitpid(p, NULL, 0);
    }
    c = 'd';
    if (write(wfd, &c, 1) != 1) return 1;
    pause(); // until the namespace is torn down
    return 0;
}

static double orphans_once(struct init *in, long count, const char *self, double *wakeups) {
    int to_child[2], from_child[2];
    if (pipe(to_child) || pipe(from_child)) die("pipe");
    char n[32], r[16], w[16];
    snprintf(n, sizeof n, "%ld", count);
    snprintf(r, sizeof r, "%d", to_child[0]);
    snprintf(w, sizeof w, "%d", from_child[1]);
    char *cmd[] = {(char *)self, "orphans-child", n, r, w, NULL};
    char *argv[MAX_ARGS + 16];
    build_argv(in, argv, cmd);
    pid_t pid = spawn_pid1(argv);
    close(to_child[0]);
    close(from_child[1]);
    char c;
    if (read_timeout(from_child[0], &c, 1, 10000)) {
        fprintf(stderr, "initbench: %s: the orphan maker did not start (fds not inherited?)\n", in->name);
        kill_and_wait(pid);
        return -1;
    }
    int64_t t0 = cpu_ns(pid);
    long w0 = status_kb(pid, "voluntary_ctxt_switches:");
    if (write(to_child[1], "g", 1) != 1) die("write");
    if (read_timeout(from_child[0], &c, 1, 600000)) {
        fprintf(stderr, "initbench: %s: the orphan maker did not finish\n", in->name);
        kill_and_wait(pid);
        return -1;
    }
    // All orphans reaped: the init has only the maker left.
    int64_t deadline = now_ns() + 30000000000LL;
    while (count_children(pid) != 1 && now_ns() < deadline) usleep(1000);
    int left = count_children(pid) - 1;
    int64_t t1 = cpu_ns(pid);
    long w1 = status_kb(pid, "voluntary_ctxt_switches:");
    *wakeups = (double)(w1 - w0) / count;
    kill_and_wait(pid);
    close(to_child[1]);
    close(from_child[0]);
    if (left != 0) {
        fprintf(stderr, "initbench: %s: %d orphans not reaped\n", in->name, left);
        return -1;
    }
    return (double)(t1 - t0) / count;
}

static void bench_orphans(struct init *inits, int n, long count, int rounds, const char *self) {
    double v[MAX_INITS][16], w[MAX_INITS][16];
    for (int r = 0; r < rounds; r++)
        for (int j = 0; j < n; j++) {
            int i = (j + r) % n;
            v[i][r] = orphans_once(&inits[i], count, self, &w[i][r]);
            fprintf(stderr, "  orphans: %-12s round %d: %.2f us/orphan, %.2f wake-ups/orphan\n", inits[i].name, r + 1,
                    v[i][r] / 1000, w[i][r]);
        }
    for (int i = 0; i < n; i++) {
        inits[i].ns_per_orphan = quantile(v[i], rounds, 0.5);
        inits[i].wakeups_per_orphan = quantile(w[i], rounds, 0.5);
    }
}

// ---------------------------------------------------------------- latency
static int receiver(int wfd) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int64_t ready = 0;
    if (write(wfd, &ready, sizeof ready) != sizeof ready) return 1;
    for (;;) {
        if (sigwaitinfo(&set, NULL) != SIGUSR1) continue;
        int64_t t = now_ns();
        if (write(wfd, &t, sizeof t) != sizeof t) return 1;
    }
}

struct live {
    pid_t pid;  // what we signal (the init, or the receiver itself for "direct")
    int rfd;
};

static struct live start_receiver(struct init *in, const char *self) {
    int p[2];
    if (pipe(p)) die("pipe");
    char w[16];
    snprintf(w, sizeof w, "%d", p[1]);
    char *cmd[] = {(char *)self, "receiver", w, NULL};
    struct live l = {.rfd = p[0]};
    if (in) {
        char *argv[MAX_ARGS + 16];
        build_argv(in, argv, cmd);
        l.pid = spawn_pid1(argv);
    } else {
        l.pid = fork();
        if (l.pid == 0) {
            execv(self, cmd);
            _exit(127);
        }
    }
    close(p[1]);
    int64_t ready;
    if (read_timeout(l.rfd, &ready, sizeof ready, 10000)) {
        fprintf(stderr, "initbench: %s: the receiver did not start\n", in ? in->name : "direct");
        exit(1);
    }
    return l;
}

static double one_signal(struct live *l) {
    int64_t t0 = now_ns(), t1;
    kill(l->pid, SIGUSR1);
    if (read_timeout(l->rfd, &t1, sizeof t1, 5000)) return -1;
    return (t1 - t0) / 1000.0;
}

static void bench_latency(struct init *inits, int n, int total, const char *self, double *direct, int *ndirect) {
    struct live lv[MAX_INITS + 1];
    for (int i = 0; i < n; i++) lv[i] = start_receiver(&inits[i], self);
    lv[n] = start_receiver(NULL, self);
    usleep(100000);
    int per_round = 25, rounds = (total + per_round - 1) / per_round;
    for (int r = 0; r < rounds; r++)
        for (int j = 0; j <= n; j++) {
            int i = (j + r) % (n + 1);
            for (int k = 0; k < per_round; k++) {
                double us = one_signal(&lv[i]);
                if (us < 0) {
                    fprintf(stderr, "initbench: %s did not forward SIGUSR1\n", i == n ? "direct" : inits[i].name);
                    exit(1);
                }
                if (i == n)
                    direct[(*ndirect)++] = us;
                else
                    inits[i].latency[inits[i].nlatency++] = us;
                usleep(200);
            }
        }
    for (int i = 0; i <= n; i++) {
        kill_and_wait(lv[i].pid);
        close(lv[i].rfd);
    }
}

// ---------------------------------------------------------------- table
static void usage(void) {
    fprintf(stderr,
            "usage: initbench table [--startup-runs N] [--orphans N] [--orphan-rounds N] [--signals N]\n"
            "                       [--rss-rounds N] [--skip-orphans] NAME=PATH[,ARG...]...\n"
            "The first init is the one compared; `tini-static` is the startup/RSS reference.\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "orphans-child")) return orphans_child(atol(argv[2]), atoi(argv[3]), atoi(argv[4]));
    if (argc >= 3 && !strcmp(argv[1], "receiver")) return receiver(atoi(argv[2]));
    if (argc < 3 || strcmp(argv[1], "table")) usage();

    int runs = 300, orphan_rounds = 3, signals = 300, rss_rounds = 9, skip_orphans = 0;
    long orphans = 20000;
    struct init inits[MAX_INITS];
    int n = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--startup-runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--orphans") && i + 1 < argc) orphans = atol(argv[++i]);
        else if (!strcmp(argv[i], "--orphan-rounds") && i + 1 < argc) orphan_rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--signals") && i + 1 < argc) signals = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rss-rounds") && i + 1 < argc) rss_rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--skip-orphans")) skip_orphans = 1;
        else if (strchr(argv[i], '=') && n < MAX_INITS) {
            struct init *in = &inits[n++];
            memset(in, 0, sizeof *in);
            in->name = strtok(argv[i], "=");
            for (char *a = strtok(NULL, ","); a && in->nargs < MAX_ARGS; a = strtok(NULL, ",")) in->argv[in->nargs++] = a;
            struct stat st;
            if (in->nargs == 0 || stat(in->argv[0], &st)) {
                fprintf(stderr, "initbench: %s: no such binary\n", in->name);
                return 1;
            }
            in->size = st.st_size;
        } else
            usage();
    }
    if (n == 0 || runs < 1 || runs > 100000 || signals < 1 || rss_rounds < 1 || rss_rounds > 64 || orphan_rounds < 1 ||
        orphan_rounds > 16)
        usage();
    char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl < 0) die("readlink /proc/self/exe");
    self[sl] = 0;

    double *direct_start = calloc(runs, sizeof(double));
    double *direct_lat = calloc(signals + 64, sizeof(double));
    int ndirect_lat = 0;
    for (int i = 0; i < n; i++) {
        inits[i].startup = calloc(runs, sizeof(double));
        inits[i].latency = calloc(signals + 64, sizeof(double));
    }

    fprintf(stderr, "startup: %d interleaved runs each...\n", runs);
    bench_startup(inits, n, runs, direct_start);
    fprintf(stderr, "rss: %d rounds...\n", rss_rounds);
    bench_rss(inits, n, rss_rounds);
    if (!skip_orphans) {
        fprintf(stderr, "orphans: %ld per run, %d rounds...\n", orphans, orphan_rounds);
        bench_orphans(inits, n, orphans, orphan_rounds, self);
    }
    fprintf(stderr, "latency: %d signals each...\n", signals);
    bench_latency(inits, n, signals, self, direct_lat, &ndirect_lat);

    double direct_med = quantile(direct_start, runs, 0.5);
    double direct_lat_med = quantile(direct_lat, ndirect_lat, 0.5);
    printf("| init | file size | startup extra, median (p90) | RSS / HWM | CPU per orphan (wake-ups) | forwarding latency, median (p90) |\n");
    printf("|---|---:|---:|---:|---:|---:|\n");
    double st_med[MAX_INITS], lat_med[MAX_INITS];
    for (int i = 0; i < n; i++) {
        struct init *in = &inits[i];
        st_med[i] = quantile(in->startup, in->nstartup, 0.5) - direct_med;
        double st_p90 = quantile(in->startup, in->nstartup, 0.9) - direct_med;
        lat_med[i] = quantile(in->latency, in->nlatency, 0.5);
        double lat_p90 = quantile(in->latency, in->nlatency, 0.9);
        printf("| %s | %ld KB | %.0f µs (%.0f µs) | %.0f / %.0f kB | ", in->name, (in->size + 512) / 1024, st_med[i], st_p90,
               in->rss_kb, in->hwm_kb);
        if (skip_orphans)
            printf("- | ");
        else
            printf("%.2f µs (%.2f) | ", in->ns_per_orphan / 1000, in->wakeups_per_orphan);
        printf("%.1f µs (%.1f µs) |\n", lat_med[i], lat_p90);
    }
    printf("| (direct `/bin/true`, direct `kill`) | | %.0f µs total | | | %.1f µs (%.1f µs) |\n", direct_med, direct_lat_med,
           quantile(direct_lat, ndirect_lat, 0.9));

    // Ratios of the first init against the references.
    int ref = -1;
    for (int i = 1; i < n; i++)
        if (!strcmp(inits[i].name, "tini-static")) ref = i;
    double best_cpu = 1e18, best_lat = 1e18;
    const char *best_cpu_name = "-", *best_lat_name = "-";
    for (int i = 1; i < n; i++) {
        if (inits[i].ns_per_orphan > 0 && inits[i].ns_per_orphan < best_cpu) {
            best_cpu = inits[i].ns_per_orphan;
            best_cpu_name = inits[i].name;
        }
        if (lat_med[i] < best_lat) {
            best_lat = lat_med[i];
            best_lat_name = inits[i].name;
        }
    }
    printf("\n| target (%s vs peers, same run) | ratio | met |\n|---|---:|---|\n", inits[0].name);
    if (ref > 0) {
        double s = st_med[0] / st_med[ref], m = inits[0].rss_kb / inits[ref].rss_kb;
        printf("| startup ≤ tini-static | %.2f | %s |\n", s, s <= 1.0 ? "yes" : "no");
        printf("| RSS ≤ tini-static | %.2f | %s |\n", m, m <= 1.0 ? "yes" : "no");
    }
    if (!skip_orphans && n > 1) {
        double c = inits[0].ns_per_orphan / best_cpu;
        printf("| CPU per orphan ≤ best peer (%s) | %.2f | %s |\n", best_cpu_name, c, c <= 1.0 ? "yes" : "no");
    }
    if (n > 1) {
        double l = lat_med[0] / best_lat;
        printf("| forwarding latency ≤ best peer (%s) | %.2f | %s |\n", best_lat_name, l, l <= 1.0 ? "yes" : "no");
    }
    return 0;
}
