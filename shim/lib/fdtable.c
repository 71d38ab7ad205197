/* libsluice-shim: the fd table's upkeep (opens, closes, dup2, mmap,
 * F_SETFL), fork, the library's start and the counters printed at exit.
 * docs/SHIM.md describes the per-fd states. */
#include "shim.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *call_names[NUM_CALLS] = {
	[CALL_read] = "read", [CALL_read_chk] = "__read_chk", [CALL_write] = "write",
	[CALL_pread] = "pread", [CALL_pread64] = "pread64", [CALL_pread_chk] = "__pread_chk",
	[CALL_pread64_chk] = "__pread64_chk", [CALL_pwrite] = "pwrite", [CALL_pwrite64] = "pwrite64",
	[CALL_lseek] = "lseek", [CALL_lseek64] = "lseek64", [CALL_fsync] = "fsync",
	[CALL_fdatasync] = "fdatasync", [CALL_ftruncate] = "ftruncate", [CALL_ftruncate64] = "ftruncate64",
	[CALL_fallocate] = "fallocate", [CALL_fallocate64] = "fallocate64",
	[CALL_posix_fallocate] = "posix_fallocate", [CALL_posix_fallocate64] = "posix_fallocate64",
	[CALL_fstat] = "fstat", [CALL_fstat64] = "fstat64", [CALL_fxstat] = "__fxstat", [CALL_fxstat64] = "__fxstat64",
	[CALL_readv] = "readv", [CALL_writev] = "writev", [CALL_preadv] = "preadv", [CALL_preadv64] = "preadv64",
	[CALL_pwritev] = "pwritev", [CALL_pwritev64] = "pwritev64", [CALL_preadv2] = "preadv2",
	[CALL_preadv64v2] = "preadv64v2", [CALL_pwritev2] = "pwritev2", [CALL_pwritev64v2] = "pwritev64v2",
	[CALL_sync_file_range] = "sync_file_range", [CALL_statx] = "statx", [CALL_fstatat] = "fstatat",
	[CALL_fstatat64] = "fstatat64", [CALL_fxstatat] = "__fxstatat", [CALL_fxstatat64] = "__fxstatat64",
};

static const char *reason_names[NUM_REASONS] = {
	"none", "not_sluice", "not_regular", "o_append", "o_path", "mmap",
	"gateway_gone", "error", "too_many", "stale_handle", "flags", "page_cache", "in_signal",
};

/* forget_reentered is fd_forget for a signal handler that interrupted
 * its thread inside ctl (ctl_lock said no): an entry the kernel served
 * (no witness) is forgotten at once. A registered one is left as it is:
 * its next call proves with kcmp that the number is no longer the
 * registered file and registers it again, and its witness and handle go
 * then. The library's own fds closed by such a handler are not handled
 * (the program would be closing numbers it never got). */
static void forget_reentered(struct fdent *e) {
	uint32_t want = FD_OFF;
	if (e->witness == 0)
		__atomic_compare_exchange_n(&e->state, &want, FD_UNKNOWN, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

void shim_opened(int fd) {
	struct fdent *e = shim_fd(fd);
	if (!e)
		return;
	fd_touch(fd);
	if (state_of(e) == FD_UNKNOWN && e->witness == 0)
		return;
	if (!ctl_lock()) {
		forget_reentered(e);
		return;
	}
	fd_forget(e);
	ctl_unlock();
}

/* stats_closing: the program closes [lo, hi]; if that takes the dup of
 * stderr the counters are printed to at exit, they go to fd 2 instead
 * (not to whatever the program opens at that number later). */
static void stats_closing(int lo, int hi) {
	int fd = __atomic_load_n(&S.stats_fd, __ATOMIC_RELAXED);
	if (fd >= 0 && fd >= lo && fd <= hi)
		__atomic_store_n(&S.stats_fd, -1, __ATOMIC_RELAXED);
}

/* closing_one lets go of the library's interest in fd, which the program
 * closes or replaces (ctl held). Ours (a witness, the channel's) are let
 * go first: a witness's file is registered again when used; a channel fd
 * retires the channel, which is returned when the program's call must
 * first wait out its users (chan_wait_fds, without ctl). */
static struct chan *closing_one(int fd) {
	struct fdent *e = shim_fd(fd);
	if (!e)
		return NULL;
	switch (state_of(e)) {
	case FD_UNKNOWN:
		if (e->witness != 0)
			fd_forget(e);
		return NULL;
	case FD_ON:
	case FD_OFF:
		fd_forget(e);
		return NULL;
	case FD_WITNESS: {
		struct fdent *o = shim_fd(e->owner);
		if (o && o->witness == fd) {
			fd_drop(o);
			o->witness = 0;
		}
		set_state(e, FD_UNKNOWN);
		return NULL;
	}
	case FD_CHANNEL: {
		/* The channel the fd is of: not always the current one (a
		 * close_range over both of a channel's fds retires it at the
		 * first). */
		struct chan *c = e->chan;
		e->chan = NULL;
		set_state(e, FD_UNKNOWN);
		return c && chan_lose_fd(c, fd) ? c : NULL;
	}
	}
	return NULL;
}

/* shim_closing: the program closes fd or replaces it (dup2). The number
 * is open until the program's call, so the library cannot get it for an
 * fd of its own in between. */
void shim_closing(int fd) {
	stats_closing(fd, fd);
	struct fdent *e = shim_fd(fd);
	if (!e || (state_of(e) == FD_UNKNOWN && e->witness == 0))
		return;
	if (!ctl_lock()) {
		forget_reentered(e);
		return;
	}
	struct chan *wait = closing_one(fd);
	ctl_unlock();
	if (wait)
		chan_wait_fds(wait);
}

/* shim_close_range closes the fds in [lo, hi] for the program
 * (close_range(2) without CLOSE_RANGE_CLOEXEC, closefrom) and returns the
 * system call's answer (-1 and errno). Unlike one close, the range holds numbers that
 * are free when the library looks: another thread opening a channel or a
 * witness could get one of them before the kernel closes the range, and
 * the library would then use a number the kernel had closed, and that the
 * program may open again (a doorbell's 8 bytes written into its file).
 * So the range is closed with ctl held, under which the library makes
 * every fd of its own; what a pass finds of the library's socket or
 * doorbell is first waited out without ctl (chan_wait_fds), and the pass
 * runs again. */
long shim_close_range(int lo, int hi, unsigned int rawlo, unsigned int rawhi, int flags) {
	stats_closing(lo, hi);
	if (!S.enabled)
		return shim_raw(SYS_close_range, rawlo, rawhi, flags, 0);
	for (;;) {
		if (!ctl_lock()) /* a signal handler on a thread inside ctl */
			return shim_raw(SYS_close_range, rawlo, rawhi, flags, 0);
		struct chan *wait[8];
		int n = 0;
		int top = __atomic_load_n(&S.hiwater, __ATOMIC_RELAXED);
		for (int fd = lo < 0 ? 0 : lo; fd < top && fd <= hi && n < 8; fd++) {
			struct chan *c = closing_one(fd);
			if (c)
				wait[n++] = c;
		}
		/* The current channel's fds past the table (it has no entries
		 * for them). */
		struct chan *c = __atomic_load_n(&S.cur, __ATOMIC_ACQUIRE);
		if (c && n < 7) {
			int sock = c->sock, kick = c->kick, lost = 0;
			if (sock >= lo && sock <= hi)
				lost |= chan_lose_fd(c, sock);
			if (kick >= lo && kick <= hi)
				lost |= chan_lose_fd(c, kick);
			if (lost)
				wait[n++] = c;
		}
		if (n == 0) {
			long r = shim_raw(SYS_close_range, rawlo, rawhi, flags, 0);
			ctl_unlock();
			return r;
		}
		ctl_unlock();
		for (int i = 0; i < n; i++)
			chan_wait_fds(wait[i]);
	}
}

/* chan_lose_fd: the program is about to close or replace fd, one of
 * channel c's own (ctl held). The channel lets go of the number and
 * retires. It returns 1 when fd was its socket or doorbell: the caller
 * then waits, once it has released ctl (chan_wait_fds), until no thread
 * is between reading the number and using it (chan_fd_use), before the
 * program's call goes on. */
int chan_lose_fd(struct chan *c, int fd) {
	int want = fd;
	int sock = __atomic_compare_exchange_n(&c->sock, &want, -1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	want = fd;
	int kick = __atomic_compare_exchange_n(&c->kick, &want, -1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	chan_retire(c);
	return sock || kick;
}

/* chan_wait_fds waits out the threads using c's socket or doorbell (a
 * system call long). Not under ctl: a signal handler on a thread inside
 * such a use may need it. */
void chan_wait_fds(struct chan *c) {
	while (__atomic_load_n(&c->fdusers, __ATOMIC_SEQ_CST) != 0)
		shim_raw(SYS_sched_yield, 0, 0, 0, 0);
}

/* off_now sends e to the kernel for reason. From a signal handler that
 * interrupted its thread inside ctl, the registration stays with the
 * gateway (the handle is given back when the channel ends). */
static void off_now(struct fdent *e, uint32_t reason) {
	if (!ctl_lock()) {
		fd_off(e, reason);
		return;
	}
	fd_drop(e);
	fd_off(e, reason);
	ctl_unlock();
}

/* shim_mapping: the program maps fd. Its data calls go to the kernel from
 * now on (the mapping and the kernel's page cache are one; shim writes
 * would reach the mapping only when the mount's notifier catches up), and
 * a kernel fstat makes the kernel take the length the gateway's notifier
 * invalidated (a fault past a stale length is SIGBUS). */
void shim_mapping(int fd) {
	struct fdent *e = shim_fd(fd);
	if (!e)
		return;
	uint32_t s = state_of(e);
	if (s == FD_ON || s == FD_UNKNOWN)
		off_now(e, REASON_MMAP);
	shim_kernel_length(fd);
}

/* shim_kernel_length makes the kernel take the file's length from the
 * gateway: the mount's notifier has invalidated its cached attributes
 * after a shim write that changed the length, and a kernel fstat fetches
 * them again. Before an mmap (a fault past a stale length is SIGBUS) and
 * before an append the kernel serves (it appends at its own idea of the
 * end, which it does not refresh itself). Cheap while they are valid. */
void shim_kernel_length(int fd) {
	struct stat st;
	shim_raw(SYS_fstat, fd, (long)&st, 0, 0);
}

void shim_setfl(int fd, int flags) {
	struct fdent *e = shim_fd(fd);
	if (!e || !(flags & O_APPEND) || state_of(e) != FD_ON)
		return;
	off_now(e, REASON_APPEND);
	shim_kernel_length(fd);
}

/* ---- fork, start and exit ---- */

/* Forks nest: a signal handler may fork while its thread is inside a
 * fork (between the atfork handlers; a pending signal restarts the fork
 * system call, so the window is all of it). fork_depth counts this
 * thread's forks in progress, and bit d of fork_held says whether the
 * fork at depth d took ctl (a handler's fork on a thread inside ctl does
 * not). One flag, as before, was cleared by the inner fork, and the outer
 * one then never let go of ctl: every other thread waited for it for
 * good. */
static __thread unsigned fork_depth __attribute__((tls_model("initial-exec")));
static __thread unsigned fork_held __attribute__((tls_model("initial-exec")));

static void before_fork(void) {
	unsigned d = fork_depth;
	if (ctl_lock() && d < 32)
		fork_held |= 1u << d;
	fork_depth = d + 1;
}

static void parent_after_fork(void) {
	unsigned d = --fork_depth;
	if (d < 32 && fork_held & (1u << d)) {
		fork_held &= ~(1u << d);
		ctl_unlock();
	}
}

/* child_after_fork: the child shares the parent's memfd and socket but
 * must not use them (its slots are the parent's threads'): it lets go of
 * its copies and opens its own channel on first use. Registrations were
 * the parent's channel's: every fd is checked again. */
static void child_after_fork(void) {
	struct chan *c = S.cur;
	S.cur = NULL;
	if (c) {
		munmap(c->mem, c->size);
		if (c->lens)
			munmap((void *)c->lens, c->lens_size);
		if (c->sock >= 0)
			shim_raw(SYS_close, c->sock, 0, 0, 0);
		if (c->kick >= 0)
			shim_raw(SYS_close, c->kick, 0, 0, 0);
	}
	for (int fd = 0; fd < S.hiwater; fd++) {
		struct fdent *e = &S.table[fd];
		if (e->state != FD_WITNESS && e->witness > 0)
			shim_raw(SYS_close, e->witness, 0, 0, 0);
		e->witness = 0;
		if (e->state != FD_OFF)
			e->state = FD_UNKNOWN;
	}
	memset(S.counts, 0, sizeof S.counts);
	S.failed_at = 0;
	S.pid = (pid_t)shim_raw(SYS_getpid, 0, 0, 0, 0);
	pthread_mutex_init(&S.ctl, NULL);
	ctl_forget_mine();
	fork_depth = fork_held = 0;
}

__attribute__((constructor)) static void shim_init(void) {
	const char *p = getenv("SLUICE_SHIM_SOCKET");
	const char *st = getenv("SLUICE_SHIM_STATS");
	const char *cr = getenv("SLUICE_SHIM_CACHED_READS");
	S.stats = st && strcmp(st, "1") == 0;
	S.cached_reads = !(cr && strcmp(cr, "0") == 0);
	S.pid = (pid_t)shim_raw(SYS_getpid, 0, 0, 0, 0);
	S.stats_fd = S.stats ? (int)shim_raw(SYS_fcntl, 2, F_DUPFD_CLOEXEC, 100, 0) : -1;
	if (!p || !*p || strlen(p) >= sizeof S.path)
		return;
	memcpy(S.path, p, strlen(p) + 1);
	S.table = raw_mmap(NULL, sizeof(struct fdent) * TABLE_MAX, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (S.table == MAP_FAILED)
		return;
	struct rlimit rl;
	S.fd_base = 512;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
		S.fd_base = rl.rlim_cur / 2 > 3 ? (int)(rl.rlim_cur / 2) : 3;
	if (S.fd_base > TABLE_MAX / 2)
		S.fd_base = TABLE_MAX / 2;
	pthread_atfork(before_fork, parent_after_fork, child_after_fork);
	S.enabled = 1;
}

/* At exit, SLUICE_SHIM_STATS=1 prints one line per call that did
 * anything, in a stable format:
 *   sluice-shim: pid=P call=NAME bypassed=N fallback=M [REASON=K ...] */
__attribute__((destructor)) static void shim_fini(void) {
	if (!S.stats)
		return;
	for (int call = 0; call < NUM_CALLS; call++) {
		uint64_t fb = 0;
		for (int r = 1; r < NUM_REASONS; r++)
			fb += S.counts[call][1 + r];
		if (S.counts[call][0] == 0 && fb == 0)
			continue;
		char line[512];
		int n = snprintf(line, sizeof line, "sluice-shim: pid=%d call=%s bypassed=%llu fallback=%llu", (int)getpid(),
				 call_names[call], (unsigned long long)S.counts[call][0], (unsigned long long)fb);
		for (int r = 1; r < NUM_REASONS && n < (int)sizeof line; r++)
			if (S.counts[call][1 + r])
				n += snprintf(line + n, sizeof line - n, " %s=%llu", reason_names[r], (unsigned long long)S.counts[call][1 + r]);
		if (n >= (int)sizeof line - 1)
			n = sizeof line - 2;
		line[n++] = '\n';
		shim_raw(SYS_write, S.stats_fd >= 0 ? S.stats_fd : 2, (long)line, n, 0);
	}
}
