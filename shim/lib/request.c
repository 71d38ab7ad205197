/* libsluice-shim: requests on the channel, and the data calls built on
 * them (docs/SHIM.md, "One request").
 *
 * A thread claims a free slot with one compare-and-swap, fills it, marks
 * it submitted (a bit in the header's bitmap), kicks the eventfd only when
 * the gateway says its poller sleeps, and waits for its own slot: a short
 * spin, then a futex on the slot's state word with a 50 ms timeout, after
 * each of which it checks that the gateway's socket is still open. */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SPIN_NS 10000     /* spin on a slot before sleeping */
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

/* await waits for slot s to be done: 0, or -1 if the gateway is gone. */
static int await(struct chan *c, struct shm_slot *s) {
	int64_t start = now_ns();
	while (now_ns() - start < SPIN_NS) {
		if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == SLOT_DONE)
			return 0;
		cpu_relax();
	}
	for (;;) {
		__atomic_store_n(&s->waiting, 1, __ATOMIC_SEQ_CST);
		if (__atomic_load_n(&s->state, __ATOMIC_SEQ_CST) == SLOT_DONE)
			break;
		struct timespec ts = {0, SLEEP_NS};
		syscall(SYS_futex, &s->state, FUTEX_WAIT, SLOT_SUBMITTED, &ts, NULL, 0);
		if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) == SLOT_DONE)
			break;
		if (chan_gone(c)) {
			__atomic_store_n(&s->waiting, 0, __ATOMIC_RELAXED);
			return -1;
		}
	}
	__atomic_store_n(&s->waiting, 0, __ATOMIC_RELAXED);
	return 0;
}

/* submit runs one request on c: in (write data) or out (read data, the
 * stat answer) of at most slot_data bytes. It returns the answer, -errno,
 * or SHIM_FALLBACK with *reason. */
static int64_t submit(struct chan *c, struct fdent *e, uint32_t op, uint32_t arg, int64_t off, int64_t len,
		      const void *in, void *out, uint32_t *reason) {
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
		memcpy(data, in, (size_t)len);
	s->op = op;
	s->arg = arg;
	s->handle = e->handle;
	s->offset = off;
	s->length = len;
	s->data = (uint64_t)(data - c->mem);
	s->waiting = 0;
	__atomic_store_n(&s->state, SLOT_SUBMITTED, __ATOMIC_RELEASE);
	__atomic_fetch_or(&h->submitted[idx / 64], 1ULL << (idx % 64), __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&h->idle, __ATOMIC_SEQ_CST)) {
		uint64_t one = 1;
		shim_raw(SYS_write, __atomic_load_n(&c->kick, __ATOMIC_ACQUIRE), (long)&one, sizeof one, 0);
	}
	if (await(c, s) < 0) {
		/* The slot stays submitted: the channel is dead and unmapped later. */
		chan_retire(c);
		*reason = REASON_GONE;
		return SHIM_FALLBACK;
	}
	int64_t res = s->result;
	uint32_t status = s->status;
	*reason = s->reason;
	if (status == STATUS_DONE && out && res > 0 && res <= len)
		memcpy(out, data, (size_t)res);
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
	if (r == SHIM_FALLBACK && (reason == REASON_STALE || reason == REASON_APPEND)) {
		pthread_mutex_lock(&S.ctl);
		fd_drop(e);
		if (reason == REASON_APPEND)
			fd_off(e, REASON_APPEND);
		pthread_mutex_unlock(&S.ctl);
	}
	return r;
}

/* rw moves n bytes at off in slot-sized pieces; a short piece ends it. */
static int64_t rw(struct chan *c, struct fdent *e, uint32_t op, char *rbuf, const char *wbuf, size_t n, int64_t off, uint32_t *reason) {
	size_t done = 0;
	while (done < n) {
		size_t piece = n - done < c->slot_data ? n - done : c->slot_data;
		int64_t r = submit(c, e, op, 0, off + (int64_t)done, (int64_t)piece, wbuf ? wbuf + done : NULL, rbuf ? rbuf + done : NULL, reason);
		if (r == SHIM_FALLBACK || r < 0)
			return done > 0 ? (int64_t)done : r;
		done += (size_t)r;
		if ((size_t)r < piece)
			break;
	}
	return (int64_t)done;
}

static int64_t io(enum call call, int fd, struct fdent *e, uint32_t op, void *rbuf, const void *wbuf, size_t n, int64_t off) {
	uint32_t reason;
	struct chan *c = fd_ready(fd, e, &reason);
	if (!c) {
		count_call(call, reason);
		return SHIM_FALLBACK;
	}
	int64_t r = rw(c, e, op, rbuf, wbuf, n, off, &reason);
	chan_release(c);
	return finish(call, e, r, reason);
}

int64_t shim_pread(enum call call, int fd, struct fdent *e, void *buf, size_t n, int64_t off) {
	if (off < 0)
		return -EINVAL;
	return io(call, fd, e, OP_READ, buf, NULL, n, off);
}

int64_t shim_pwrite(enum call call, int fd, struct fdent *e, const void *buf, size_t n, int64_t off) {
	if (off < 0)
		return -EINVAL;
	return io(call, fd, e, OP_WRITE, NULL, buf, n, off);
}

/* shim_read and shim_write use the kernel's offset: read it, move the
 * data at it, advance it. Two threads or processes doing read() or
 * write() on one open file description at once may both use the same
 * offset (the kernel would serialise them): docs/SHIM.md. */
static int64_t at_offset(enum call call, int fd, struct fdent *e, uint32_t op, void *rbuf, const void *wbuf, size_t n) {
	uint32_t reason;
	struct chan *c = fd_ready(fd, e, &reason);
	if (!c) {
		count_call(call, reason);
		return SHIM_FALLBACK;
	}
	int64_t pos = shim_raw(SYS_lseek, fd, 0, SEEK_CUR, 0);
	int64_t r = pos < 0 ? SHIM_FALLBACK : rw(c, e, op, rbuf, wbuf, n, pos, &reason);
	if (pos < 0)
		reason = REASON_ERROR;
	chan_release(c);
	if (r > 0)
		shim_raw(SYS_lseek, fd, pos + r, SEEK_SET, 0);
	return finish(call, e, r, reason);
}

int64_t shim_read(enum call call, int fd, struct fdent *e, void *buf, size_t n) {
	return at_offset(call, fd, e, OP_READ, buf, NULL, n);
}

int64_t shim_write(enum call call, int fd, struct fdent *e, const void *buf, size_t n) {
	return at_offset(call, fd, e, OP_WRITE, NULL, buf, n);
}

int64_t shim_op(enum call call, int fd, struct fdent *e, uint32_t op, uint32_t arg, int64_t off, int64_t len) {
	uint32_t reason;
	struct chan *c = fd_ready(fd, e, &reason);
	if (!c) {
		count_call(call, reason);
		return SHIM_FALLBACK;
	}
	int64_t r = submit(c, e, op, arg, off, len, NULL, NULL, &reason);
	chan_release(c);
	return finish(call, e, r, reason);
}

int64_t shim_fstat(enum call call, int fd, struct fdent *e, struct stat *st) {
	uint32_t reason;
	struct chan *c = fd_ready(fd, e, &reason);
	if (!c) {
		count_call(call, reason);
		return SHIM_FALLBACK;
	}
	struct shm_stat a;
	int64_t r = submit(c, e, OP_FSTAT, 0, 0, sizeof a, NULL, &a, &reason);
	chan_release(c);
	if (r >= 0 && r != sizeof a)
		r = -EIO;
	if (r == sizeof a) {
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
		r = 0;
	}
	return finish(call, e, r, reason);
}

/* shim_seek_end is lseek(fd, off, SEEK_END) with the gateway's length:
 * the kernel's cached size lags a shim write by the mount's notifier. */
int64_t shim_seek_end(enum call call, int fd, struct fdent *e, int64_t off) {
	struct stat st;
	int64_t r = shim_fstat(call, fd, e, &st);
	if (r == SHIM_FALLBACK || r < 0)
		return r;
	if ((off > 0 && st.st_size > INT64_MAX - off) || st.st_size + off < 0)
		return -EINVAL;
	return shim_raw(SYS_lseek, fd, st.st_size + off, SEEK_SET, 0) < 0 ? -errno : st.st_size + off;
}
