/* libsluice-shim: requests on the channel, and the data calls built on
 * them (docs/SHIM.md, "One request").
 *
 * A thread claims a free slot with one compare-and-swap, fills it, marks
 * it submitted (a bit in the header's bitmap), kicks the eventfd only when
 * the gateway says its poller sleeps, and waits for its own slot: a spin
 * sized by recent requests (await), then a futex on the slot's state word
 * with a 50 ms timeout, after each of which it checks that the gateway's
 * socket is still open. */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define SLEEP_NS 50000000 /* one futex wait; then check the socket */

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ volatile("yield")
#else
#define cpu_relax() ((void)0)
#endif

/* claim takes a free slot (one CAS), or -1 if the channel dies while all
 * are busy. */
static int claim(struct chan *c) {
	static __thread uint32_t hint;
	struct shm_slot *slots = (struct shm_slot *)(c->mem + SHM_PAGE);
	for (uint32_t spins = 0;; spins++) {
		for (uint32_t i = 0; i < c->slots; i++) {
			uint32_t idx = (hint + i) % c->slots;
			uint32_t want = SLOT_FREE;
			if (__atomic_load_n(&slots[idx].state, __ATOMIC_RELAXED) == SLOT_FREE &&
			    __atomic_compare_exchange_n(&slots[idx].state, &want, SLOT_CLAIMED, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
				hint = idx;
				return (int)idx;
			}
		}
		if (spins % 1024 == 1023 && chan_gone(c))
			return -1;
		sched_yield();
	}
}

/* Waiting for a slot. A thread spins while its request is likely to be
 * done soon, then sleeps on a futex: the spin budget is twice the average
 * time of recent requests of the same class (reads, writes, syncs), at
 * least SPIN_MIN_NS and at most SPIN_MAX_NS; a class that averages more
 * than SPIN_MAX_NS (fsync on a disk, a throttled file) spins only
 * SPIN_MIN_NS, and so does a request that had to kick the gateway's
 * poller awake (its answer waits for a wake-up). At most MAX_SPINNERS
 * threads of a process spin at once: sixteen threads spinning on two
 * cores would starve the gateway that answers them. */
#define SPIN_MIN_NS 2000
#define SPIN_MAX_NS 60000
#define MAX_SPINNERS 2

static int class_of(uint32_t op) {
	switch (op) {
	case OP_READ:
	case OP_FSTAT:
		return 0;
	case OP_FSYNC:
	case OP_FDATASYNC:
		return 2;
	}
	return 1;
}

static int64_t spin_budget(struct chan *c, int cls, int kicked) {
	if (__atomic_add_fetch(&c->spinners, 1, __ATOMIC_RELAXED) > MAX_SPINNERS)
		return 0;
	if (kicked)
		return SPIN_MIN_NS;
	int64_t avg = __atomic_load_n(&c->avg_ns[cls], __ATOMIC_RELAXED);
	if (avg > SPIN_MAX_NS)
		return SPIN_MIN_NS;
	int64_t b = 2 * avg;
	return b < SPIN_MIN_NS ? SPIN_MIN_NS : b > SPIN_MAX_NS ? SPIN_MAX_NS : b;
}

/* observe folds one request's time into its class's average (weight 1/8;
 * racy updates from several threads only blur it). */
static void observe(struct chan *c, int cls, int64_t ns) {
	int64_t avg = __atomic_load_n(&c->avg_ns[cls], __ATOMIC_RELAXED);
	__atomic_store_n(&c->avg_ns[cls], avg + (ns - avg) / 8, __ATOMIC_RELAXED);
}

/* abandoned reports whether a request still submitted on c will never
 * run, so that its caller may fall back: the gateway let go of the
 * channel (the header's released word), or its end of the socket is
 * closed (it died). The channel being dead (retired) is not enough: the
 * gateway still serves it, and a write that fell back to the kernel could
 * be overwritten by the channel's copy after it. A channel whose socket
 * the program took (closed or replaced it) is given up ABANDON_NS after
 * the request started: the gateway, seeing the socket close, lets go at
 * once; one that died meanwhile never says so. */
#define ABANDON_NS 10000000000LL
static int abandoned(struct chan *c, int64_t start) {
	struct shm_header *h = (struct shm_header *)c->mem;
	if (__atomic_load_n(&h->released, __ATOMIC_ACQUIRE))
		return 1;
	struct pollfd p = {.fd = chan_fd_use(c, &c->sock), .events = POLLIN | POLLRDHUP};
	int gone = p.fd < 0 ? now_ns() - start > ABANDON_NS
			    : shim_raw(SYS_poll, (long)&p, 1, 0, 0) > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL));
	chan_fd_done(c);
	return gone;
}

/* await waits for slot s to be done: 0, or -1 if it never will be. */
static int await(struct chan *c, struct shm_slot *s, int cls, int kicked, int64_t start) {
	int64_t budget = spin_budget(c, cls, kicked), now = start;
	int done = 0;
	while (now - start < budget) {
		if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == SLOT_DONE) {
			done = 1;
			break;
		}
		cpu_relax();
		now = now_ns();
	}
	__atomic_sub_fetch(&c->spinners, 1, __ATOMIC_RELAXED);
	if (!done) {
		for (;;) {
			__atomic_store_n(&s->waiting, 1, __ATOMIC_SEQ_CST);
			if (__atomic_load_n(&s->state, __ATOMIC_SEQ_CST) == SLOT_DONE)
				break;
			struct timespec ts = {0, SLEEP_NS};
			syscall(SYS_futex, &s->state, FUTEX_WAIT, SLOT_SUBMITTED, &ts, NULL, 0);
			if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == SLOT_DONE)
				break;
			if (abandoned(c, start)) {
				__atomic_store_n(&s->waiting, 0, __ATOMIC_RELAXED);
				return -1;
			}
		}
		__atomic_store_n(&s->waiting, 0, __ATOMIC_RELAXED);
		now = now_ns();
	}
	observe(c, cls, now - start);
	return 0;
}

/* A cursor over a program's vector: pieces of the slot data are gathered
 * from it (writes) or scattered into it (reads), one iovec after another. */
struct cursor {
	const struct iovec *iov;
	int cnt, i;
	size_t at; /* bytes of iov[i] already moved */
};

/* move copies n bytes between the cursor's buffers and p: into p (gather)
 * or out of p (scatter). The cursor holds at least n more bytes. */
static void move(struct cursor *cur, char *p, size_t n, int gather) {
	while (n > 0 && cur->i < cur->cnt) {
		char *b = (char *)cur->iov[cur->i].iov_base + cur->at;
		size_t k = cur->iov[cur->i].iov_len - cur->at;
		if (k > n)
			k = n;
		if (gather)
			memcpy(p, b, k);
		else
			memcpy(b, p, k);
		p += k, n -= k, cur->at += k;
		if (cur->at == cur->iov[cur->i].iov_len)
			cur->i++, cur->at = 0;
	}
}

/* kick rings the gateway's doorbell. The program may close or replace the
 * eventfd's number at any time (dup2 over it, close_range): chan_fd_use
 * fences the write against that, so these 8 bytes never land in a file
 * the program put there. */
static void kick(struct chan *c) {
	uint64_t one = 1;
	int fd = chan_fd_use(c, &c->kick);
	if (fd >= 0)
		shim_raw(SYS_write, fd, (long)&one, sizeof one, 0);
	chan_fd_done(c);
}

/* submit runs one request on c: in (write data) or out (read data, the
 * stat answer) of at most slot_data bytes. It returns the answer, -errno,
 * or SHIM_FALLBACK with *reason. */
static int64_t submit(struct chan *c, struct fdent *e, uint32_t op, uint32_t arg, int64_t off, int64_t len,
		      struct cursor *in, struct cursor *out, uint32_t *reason) {
	int idx = claim(c);
	if (idx < 0) {
		chan_retire(c);
		*reason = REASON_GONE;
		return SHIM_FALLBACK;
	}
	struct shm_header *h = (struct shm_header *)c->mem;
	struct shm_slot *s = (struct shm_slot *)(c->mem + SHM_PAGE) + idx;
	char *data = c->mem + c->data_start + (size_t)idx * c->slot_data;
	if (in && len > 0)
		move(in, data, (size_t)len, 1);
	s->op = op;
	s->arg = arg;
	s->handle = e->handle;
	s->offset = off;
	s->length = len;
	s->data = (uint64_t)(data - c->mem);
	s->waiting = 0;
	int64_t start = now_ns();
	__atomic_store_n(&s->state, SLOT_SUBMITTED, __ATOMIC_RELEASE);
	__atomic_fetch_or(&h->submitted[idx / 64], 1ULL << (idx % 64), __ATOMIC_SEQ_CST);
	int kicked = __atomic_load_n(&h->idle, __ATOMIC_SEQ_CST) != 0;
	if (kicked)
		kick(c);
	if (await(c, s, class_of(op), kicked, start) < 0) {
		/* The slot stays submitted: the channel is dead and unmapped later. */
		chan_retire(c);
		*reason = REASON_GONE;
		return SHIM_FALLBACK;
	}
	int64_t res = s->result;
	uint32_t status = s->status;
	*reason = s->reason;
	if (status == STATUS_DONE && out && res > 0 && res <= len)
		move(out, data, (size_t)res, 0);
	__atomic_store_n(&s->state, SLOT_FREE, __ATOMIC_RELEASE);
	if (status != STATUS_DONE)
		return SHIM_FALLBACK;
	if (res > len && (op == OP_READ || op == OP_WRITE))
		return -EIO;
	*reason = REASON_NONE;
	return res;
}

/* finish counts a call's outcome and, for a stale handle, forgets it. */
static int64_t finish(enum call call, struct fdent *e, int64_t r, uint32_t reason) {
	count_call(call, r == SHIM_FALLBACK ? reason : REASON_NONE);
	if (r == SHIM_FALLBACK && (reason == REASON_STALE || reason == REASON_APPEND) && ctl_lock()) {
		fd_drop(e);
		if (reason == REASON_APPEND)
			fd_off(e, REASON_APPEND);
		ctl_unlock();
	}
	return r;
}

/* rw moves n bytes at off in slot-sized pieces, gathered from or
 * scattered into the cursor; a short piece ends it. */
static int64_t rw(struct chan *c, struct fdent *e, uint32_t op, uint32_t arg, struct cursor *cur, size_t n, int64_t off,
		  uint32_t *reason) {
	size_t done = 0;
	while (done < n) {
		size_t piece = n - done < c->slot_data ? n - done : c->slot_data;
		int64_t r = submit(c, e, op, arg, off + (int64_t)done, (int64_t)piece, op == OP_WRITE ? cur : NULL,
				   op == OP_READ ? cur : NULL, reason);
		if (r == SHIM_FALLBACK || r < 0)
			return done > 0 ? (int64_t)done : r;
		done += (size_t)r;
		if ((size_t)r < piece)
			break;
	}
	return (int64_t)done;
}

/* shim_io moves the vector's bytes at off, or at the kernel's file
 * offset (SHIM_AT_OFFSET: read it, move the data at it, advance it). Two
 * threads or processes doing read() or write() on one open file
 * description at once may both use the same offset (the kernel would
 * serialise them): docs/SHIM.md. */
int64_t shim_io(enum call call, int fd, struct fdent *e, uint32_t op, uint32_t arg, const struct iovec *iov, int cnt, int64_t off) {
	size_t n = 0;
	for (int i = 0; i < cnt; i++)
		n += iov[i].iov_len;
	if (n > (size_t)INT64_MAX || (off < 0 && off != SHIM_AT_OFFSET))
		return -EINVAL; /* the callers pass neither */
	uint32_t reason;
	if (op == OP_READ && S.cached_reads && state_of(e) == FD_ON && (e->flags & REG_CACHED)) {
		/* A read-only buffered fd: the kernel's page cache serves its
		 * reads, which the gateway keeps coherent with shim writes
		 * (docs/SHIM.md, "Reads the page cache serves"). No proof that
		 * fd is still the registered file (fd_ready's kcmp, a system
		 * call per read): the kernel serves whatever fd is now. */
		count_call(call, REASON_CACHED);
		return SHIM_FALLBACK;
	}
	struct chan *c = fd_ready(fd, e, &reason);
	if (!c) {
		count_call(call, reason);
		if (op == OP_WRITE && reason == REASON_APPEND)
			shim_kernel_length(fd);
		return SHIM_FALLBACK;
	}
	if (op == OP_READ && (e->flags & REG_CACHED) && S.cached_reads) {
		/* Registered just now (fd_ready): as above. */
		chan_release(c);
		count_call(call, REASON_CACHED);
		return SHIM_FALLBACK;
	}
	int64_t pos = off;
	if (off == SHIM_AT_OFFSET)
		pos = shim_raw(SYS_lseek, fd, 0, SEEK_CUR, 0);
	struct cursor cur = {.iov = iov, .cnt = cnt};
	int64_t r = SHIM_FALLBACK;
	if (pos < 0)
		reason = REASON_ERROR;
	else
		r = rw(c, e, op, arg, &cur, n, pos, &reason);
	chan_release(c);
	if (off == SHIM_AT_OFFSET && r > 0)
		shim_raw(SYS_lseek, fd, pos + r, SEEK_SET, 0);
	r = finish(call, e, r, reason);
	if (op == OP_WRITE && r == SHIM_FALLBACK && reason == REASON_APPEND)
		shim_kernel_length(fd);
	return r;
}

int64_t shim_check(enum call call, int fd, struct fdent *e, uint32_t why) {
	uint32_t reason;
	struct chan *c = fd_ready(fd, e, &reason);
	if (c) {
		chan_release(c);
		reason = why;
	}
	count_call(call, reason);
	return reason == REASON_NONE ? 0 : SHIM_FALLBACK;
}

int64_t shim_op(enum call call, int fd, struct fdent *e, uint32_t op, uint32_t arg, int64_t off, int64_t len) {
	uint32_t reason;
	int sync = op == OP_FSYNC || op == OP_FDATASYNC;
	struct chan *c = fd_ready(fd, e, &reason);
	if (!c) {
		if (sync) /* the kernel syncs it: a crash is reported there */
			__atomic_store_n(&e->sync_kernel, 0, __ATOMIC_RELAXED);
		count_call(call, reason);
		return SHIM_FALLBACK;
	}
	if (sync && __atomic_exchange_n(&e->sync_kernel, 0, __ATOMIC_RELAXED)) {
		/* The first sync since the fd's channel died: through the
		 * kernel, so that a crash is reported (fdent.sync_kernel). */
		chan_release(c);
		count_call(call, REASON_GONE);
		return SHIM_FALLBACK;
	}
	int64_t r = submit(c, e, op, arg, off, len, NULL, NULL, &reason);
	chan_release(c);
	return finish(call, e, r, reason);
}

/* shim_attr asks the gateway for fd's attributes (fstat, statx). */
int64_t shim_attr(enum call call, int fd, struct fdent *e, struct shm_stat *a) {
	uint32_t reason;
	struct chan *c = fd_ready(fd, e, &reason);
	if (!c) {
		count_call(call, reason);
		return SHIM_FALLBACK;
	}
	struct iovec v = {.iov_base = a, .iov_len = sizeof *a};
	struct cursor out = {.iov = &v, .cnt = 1};
	int64_t r = submit(c, e, OP_FSTAT, 0, 0, sizeof *a, NULL, &out, &reason);
	chan_release(c);
	if (r >= 0)
		r = r == sizeof *a ? 0 : -EIO;
	return finish(call, e, r, reason);
}

int64_t shim_fstat(enum call call, int fd, struct fdent *e, struct stat *st) {
	struct shm_stat a;
	int64_t r = shim_attr(call, fd, e, &a);
	if (r != 0)
		return r;
	memset(st, 0, sizeof *st);
	st->st_dev = e->dev;
	st->st_ino = a.ino;
	st->st_mode = a.mode;
	st->st_nlink = a.nlink;
	st->st_uid = a.uid;
	st->st_gid = a.gid;
	st->st_rdev = a.rdev;
	st->st_size = a.size;
	st->st_blksize = a.blksize;
	st->st_blocks = a.blocks;
	st->st_atim.tv_sec = a.atime_ns / 1000000000LL;
	st->st_atim.tv_nsec = a.atime_ns % 1000000000LL;
	st->st_mtim.tv_sec = a.mtime_ns / 1000000000LL;
	st->st_mtim.tv_nsec = a.mtime_ns % 1000000000LL;
	st->st_ctim.tv_sec = a.ctime_ns / 1000000000LL;
	st->st_ctim.tv_nsec = a.ctime_ns % 1000000000LL;
	return 0;
}

/* shim_seek_end is lseek(fd, off, SEEK_END) with the gateway's length:
 * the kernel's cached size is not the truth for a file the shim extends.
 * The notifier's invalidation races with GETATTR answers in flight (the
 * kernel drops an answer older than the invalidation and keeps its old
 * size), so another process's SEEK_END can come back short. Tried:
 * SEEK_END served by the kernel made PostgreSQL fail at once with
 * "unexpected data beyond EOF" (eight backends extending and sizing the
 * same relations); docs/SHIM.md. The length comes from the channel's
 * length table, which the gateway keeps current before any change's
 * request returns (no round trip), or else from an fstat request. */
int64_t shim_seek_end(enum call call, int fd, struct fdent *e, int64_t off) {
	uint32_t reason;
	int64_t size = -1;
	struct chan *c = fd_ready(fd, e, &reason);
	if (c) {
		if (e->lenw && c->lens)
			size = (int64_t)__atomic_load_n(&c->lens[e->lenw], __ATOMIC_ACQUIRE);
		chan_release(c);
	}
	if (size < 0) {
		struct stat st;
		int64_t r = shim_fstat(call, fd, e, &st);
		if (r == SHIM_FALLBACK || r < 0)
			return r;
		size = st.st_size;
	} else {
		count_call(call, REASON_NONE);
	}
	if ((off > 0 && size > INT64_MAX - off) || size + off < 0)
		return -EINVAL;
	return shim_raw(SYS_lseek, fd, size + off, SEEK_SET, 0) < 0 ? -errno : size + off;
}
