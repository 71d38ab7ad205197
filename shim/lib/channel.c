/* libsluice-shim: the channel to the gateway, the fd table and the
 * counters. docs/SHIM.md is the manual.
 *
 * One channel per process: a SOCK_SEQPACKET socket to the gateway's shim
 * socket, a sealed memfd (header, slot records, data regions) and an
 * eventfd to kick the gateway's poller. A thread claims a free slot with
 * one compare-and-swap, fills it, marks it submitted (a bit in the
 * header's bitmap), kicks the eventfd only when the gateway says its
 * poller sleeps, and waits for its own slot: a short spin, then a futex
 * on the slot's state word with a 50 ms timeout, after each of which it
 * checks that the gateway's socket is still open. Nothing here starts a
 * thread; the control socket is used under one mutex. */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/eventfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 32
#define SLOT_DATA (256 * 1024)
#define TABLE_MAX 65536
#define SPIN_NS 10000               /* spin on a slot before sleeping */
#define SLEEP_NS 50000000           /* one futex wait; then check the socket */
#define REPLY_TIMEOUT_MS 5000       /* a control reply */
#define RETRY_NS 1000000000LL       /* after a failed connect, wait this long */

/* A channel. Its struct is never freed (a page per channel the process
 * ever had): a thread that loaded the pointer before the channel died may
 * still look at it. users counts the threads inside it, plus one while it
 * is the current channel; the last one out of a dead channel unmaps it. */
struct chan {
	int sock, kick;
	char *mem;
	size_t size;
	uint32_t slots, slot_data, data_start;
	uint32_t gen;
	uint32_t users, dead, destroyed;
};

static struct {
	int enabled, stats;
	int stats_fd; /* a dup of stderr taken at start: programs close theirs (gnulib's close_stdout) */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct fdent *table;
	int hiwater; /* highest fd with an entry + 1 */
	int fd_base; /* where our own fds go: high, out of programs' way */
	pthread_mutex_t ctl;
	struct chan *cur;
	uint32_t gens;
	int64_t failed_at;
	uint64_t neg_dev[16]; /* devices the gateway said are not its mounts */
	int neg_n;
	uint64_t counts[NUM_CALLS][1 + NUM_REASONS]; /* [0] bypassed, [1+r] fell back for r */
} S = {.ctl = PTHREAD_MUTEX_INITIALIZER};

static const char *call_names[NUM_CALLS] = {
	"read", "__read_chk", "write", "pread", "pread64", "__pread_chk", "__pread64_chk",
	"pwrite", "pwrite64", "lseek", "lseek64", "fsync", "fdatasync", "ftruncate",
	"ftruncate64", "fallocate", "fallocate64", "posix_fallocate", "posix_fallocate64",
	"fstat", "fstat64", "__fxstat", "__fxstat64",
};

static const char *reason_names[NUM_REASONS] = {
	"none", "not_sluice", "not_regular", "o_append", "o_path", "mmap",
	"gateway_gone", "error", "too_many", "stale_handle",
};

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ volatile("yield")
#else
#define cpu_relax() ((void)0)
#endif

long shim_raw(long nr, long a, long b, long c, long d) { return syscall(nr, a, b, c, d); }

/* raw_mmap: the library maps its own memory without its mmap wrapper. */
static void *raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

static int64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void count(enum call call, uint32_t reason) {
	if (reason >= NUM_REASONS)
		reason = REASON_ERROR;
	__atomic_fetch_add(&S.counts[call][reason == REASON_NONE ? 0 : 1 + reason], 1, __ATOMIC_RELAXED);
}

struct fdent *shim_fd(int fd) {
	if (!S.enabled || fd < 0 || fd >= TABLE_MAX)
		return NULL;
	return &S.table[fd];
}

static uint32_t state_of(struct fdent *e) { return __atomic_load_n(&e->state, __ATOMIC_ACQUIRE); }
static void set_state(struct fdent *e, uint32_t s) { __atomic_store_n(&e->state, s, __ATOMIC_RELEASE); }

static void touch(int fd) {
	if (fd >= 0 && fd < TABLE_MAX && fd + 1 > __atomic_load_n(&S.hiwater, __ATOMIC_RELAXED))
		__atomic_store_n(&S.hiwater, fd + 1, __ATOMIC_RELAXED);
}

/* high moves one of our fds up, out of the numbers programs use. */
static int high(int fd) {
	int h = (int)shim_raw(SYS_fcntl, fd, F_DUPFD_CLOEXEC, S.fd_base, 0);
	if (h < 0)
		return fd;
	shim_raw(SYS_close, fd, 0, 0, 0);
	return h;
}

/* ---- control messages ---- */

static int send_msg(int sock, const void *msg, size_t len, const int *fds, int nfds) {
	struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
	char cbuf[CMSG_SPACE(4 * sizeof(int))];
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	if (nfds > 0) {
		memset(cbuf, 0, sizeof cbuf);
		mh.msg_control = cbuf;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
	}
	long n;
	do
		n = shim_raw(SYS_sendmsg, sock, (long)&mh, MSG_NOSIGNAL, 0);
	while (n < 0 && errno == EINTR);
	return n == (long)len ? 0 : -1;
}

/* recv_reply reads one message of exactly len bytes and type typ. */
static int recv_reply(int sock, void *buf, size_t len, uint16_t typ) {
	struct pollfd p = {.fd = sock, .events = POLLIN};
	int64_t deadline = now_ns() + REPLY_TIMEOUT_MS * 1000000LL;
	for (;;) {
		int left = (int)((deadline - now_ns()) / 1000000);
		if (left <= 0)
			return -1;
		long r = shim_raw(SYS_poll, (long)&p, 1, left, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		break;
	}
	long n;
	do
		n = shim_raw(SYS_recvfrom, sock, (long)buf, len, MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	struct msg_hdr *h = buf;
	if (n != (long)len || h->magic != MSG_MAGIC || h->type != typ || h->version != SHIM_VERSION)
		return -1;
	return 0;
}

/* ---- channels ---- */

static void destroy(struct chan *c) {
	if (__atomic_exchange_n(&c->destroyed, 1, __ATOMIC_ACQ_REL))
		return;
	munmap(c->mem, c->size);
	int fds[2] = {__atomic_exchange_n(&c->sock, -1, __ATOMIC_ACQ_REL), __atomic_exchange_n(&c->kick, -1, __ATOMIC_ACQ_REL)};
	for (int i = 0; i < 2; i++) {
		if (fds[i] < 0)
			continue;
		if (fds[i] < TABLE_MAX)
			set_state(&S.table[fds[i]], FD_UNKNOWN);
		shim_raw(SYS_close, fds[i], 0, 0, 0);
	}
}

static void chan_release(struct chan *c) {
	if (__atomic_sub_fetch(&c->users, 1, __ATOMIC_ACQ_REL) == 0 && __atomic_load_n(&c->dead, __ATOMIC_ACQUIRE))
		destroy(c);
}

static struct chan *chan_acquire(void) {
	struct chan *c = __atomic_load_n(&S.cur, __ATOMIC_ACQUIRE);
	if (!c)
		return NULL;
	__atomic_add_fetch(&c->users, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&c->dead, __ATOMIC_SEQ_CST)) {
		chan_release(c);
		return NULL;
	}
	return c;
}

/* retire makes c dead (once): new calls open another channel; the last
 * thread inside it unmaps it. */
static void retire(struct chan *c) {
	uint32_t zero = 0;
	if (!__atomic_compare_exchange_n(&c->dead, &zero, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
		return;
	struct chan *want = c;
	__atomic_compare_exchange_n(&S.cur, &want, NULL, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	chan_release(c); /* the current channel's own reference */
}

/* gone reports whether the gateway has closed its end of c's socket. */
static int gone(struct chan *c) {
	if (__atomic_load_n(&c->dead, __ATOMIC_ACQUIRE))
		return 1;
	struct pollfd p = {.fd = __atomic_load_n(&c->sock, __ATOMIC_ACQUIRE), .events = POLLIN | POLLRDHUP};
	if (p.fd < 0)
		return 1;
	if (shim_raw(SYS_poll, (long)&p, 1, 0, 0) > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)))
		return 1;
	return 0;
}

static int kcmp_works(int fd) {
	pid_t pid = getpid();
	return syscall(SYS_kcmp, pid, pid, KCMP_FILE, fd, fd) == 0;
}

/* chan_open connects to the gateway and shares a new memfd with it.
 * Called with ctl held. After a failure it does not try again for a
 * second (a missing gateway costs one connect a second, not one a call). */
static struct chan *chan_open(void) {
	int64_t t = now_ns();
	if (S.failed_at && t - S.failed_at < RETRY_NS)
		return NULL;
	int sock = -1, memfd = -1, kick = -1;
	char *mem = MAP_FAILED;
	size_t size = SHM_PAGE + ((SLOTS * sizeof(struct shm_slot) + SHM_PAGE - 1) / SHM_PAGE) * SHM_PAGE + (size_t)SLOTS * SLOT_DATA;
	sock = (int)shim_raw(SYS_socket, AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path, S.path, sizeof sa.sun_path);
	if (sock < 0 || shim_raw(SYS_connect, sock, (long)&sa, sizeof sa, 0) < 0 || !kcmp_works(sock))
		goto fail;
	memfd = (int)shim_raw(SYS_memfd_create, (long)"sluice-shim", MFD_CLOEXEC | MFD_ALLOW_SEALING, 0, 0);
	if (memfd < 0 || shim_raw(SYS_ftruncate, memfd, (long)size, 0, 0) < 0 ||
	    shim_raw(SYS_fcntl, memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, 0) < 0)
		goto fail;
	mem = raw_mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	kick = (int)shim_raw(SYS_eventfd2, 0, EFD_CLOEXEC | EFD_NONBLOCK, 0, 0);
	if (mem == MAP_FAILED || kick < 0)
		goto fail;
	struct shm_header *h = (struct shm_header *)mem;
	h->magic = SHM_MAGIC;
	h->version = SHIM_VERSION;
	h->slots = SLOTS;
	h->slot_data = SLOT_DATA;
	h->size = size;
	struct msg_hello hello = {.h = {MSG_MAGIC, MSG_HELLO, SHIM_VERSION}, .slots = SLOTS, .slot_data = SLOT_DATA, .size = size, .pid = (uint32_t)getpid()};
	int fds[2] = {memfd, kick};
	struct msg_hello_ok ok;
	if (send_msg(sock, &hello, sizeof hello, fds, 2) < 0 || recv_reply(sock, &ok, sizeof ok, MSG_HELLO_OK) < 0 || ok.err != 0)
		goto fail;
	shim_raw(SYS_close, memfd, 0, 0, 0);
	struct chan *c = raw_mmap(NULL, sizeof *c, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (c == MAP_FAILED) {
		memfd = -1;
		goto fail;
	}
	c->sock = high(sock);
	c->kick = high(kick);
	c->mem = mem;
	c->size = size;
	c->slots = SLOTS;
	c->slot_data = SLOT_DATA;
	c->data_start = (uint32_t)(size - (size_t)SLOTS * SLOT_DATA);
	c->gen = ++S.gens;
	c->users = 1;
	for (int i = 0; i < 2; i++) {
		int fd = i ? c->kick : c->sock;
		if (fd < TABLE_MAX) {
			touch(fd);
			set_state(&S.table[fd], FD_CHANNEL);
		}
	}
	S.failed_at = 0;
	__atomic_store_n(&S.cur, c, __ATOMIC_RELEASE);
	return c;
fail:
	if (mem != MAP_FAILED)
		munmap(mem, size);
	for (int i = 0; i < 3; i++) {
		int fd = i == 0 ? sock : i == 1 ? memfd : kick;
		if (fd >= 0)
			shim_raw(SYS_close, fd, 0, 0, 0);
	}
	S.failed_at = t ? t : 1;
	return NULL;
}

/* ---- registration ---- */

static void unregister(struct fdent *e) {
	struct chan *c = chan_acquire();
	if (!c)
		return;
	if (c->gen == e->gen) {
		struct msg_unregister m = {.h = {MSG_MAGIC, MSG_UNREGISTER, SHIM_VERSION}, .handle = e->handle};
		send_msg(c->sock, &m, sizeof m, NULL, 0);
	}
	chan_release(c);
}

/* drop forgets e's registration (ctl held): the handle goes back to the
 * gateway and our witness is closed. */
static void drop(struct fdent *e) {
	if (state_of(e) != FD_ON)
		return;
	unregister(e);
	int w = e->witness;
	e->witness = -1;
	set_state(e, FD_UNKNOWN);
	if (w >= 0) {
		if (w < TABLE_MAX)
			set_state(&S.table[w], FD_UNKNOWN);
		shim_raw(SYS_close, w, 0, 0, 0);
	}
}

static void off(struct fdent *e, uint32_t reason) {
	e->reason = reason;
	set_state(e, FD_OFF);
}

static int negative(uint64_t dev) {
	for (int i = 0; i < S.neg_n; i++)
		if (S.neg_dev[i] == dev)
			return 1;
	return 0;
}

/* check_fd decides what the kernel alone can tell: returns a reason, or
 * REASON_NONE when the gateway must look (ctl held). */
static uint32_t check_fd(int fd, struct stat *st) {
	if (shim_raw(SYS_fstat, fd, (long)st, 0, 0) < 0)
		return REASON_ERROR;
	int fl = (int)shim_raw(SYS_fcntl, fd, F_GETFL, 0, 0);
	if (fl < 0)
		return REASON_ERROR;
	if (fl & O_PATH)
		return REASON_PATH;
	if (!S_ISREG(st->st_mode))
		return REASON_NOT_REGULAR;
	if (negative(st->st_dev))
		return REASON_NOT_SLUICE;
	if (fl & O_APPEND)
		return REASON_APPEND;
	return REASON_NONE;
}

/* do_register hands fd to the gateway and records its answer in e (ctl
 * held, e in FD_UNKNOWN). It returns the reason the fd is not served, or
 * REASON_GONE with e left unknown (try again later). */
static uint32_t do_register(int fd, struct fdent *e) {
	struct stat st;
	uint32_t r = check_fd(fd, &st);
	if (r != REASON_NONE) {
		off(e, r);
		return r;
	}
	struct chan *c = __atomic_load_n(&S.cur, __ATOMIC_ACQUIRE);
	if (!c || c->dead)
		c = chan_open();
	if (!c)
		return REASON_GONE;
	struct msg_register m = {.h = {MSG_MAGIC, MSG_REGISTER, SHIM_VERSION}, .fd = (uint32_t)fd};
	struct msg_registered rep;
	if (send_msg(c->sock, &m, sizeof m, &fd, 1) < 0 || recv_reply(c->sock, &rep, sizeof rep, MSG_REGISTERED) < 0) {
		retire(c);
		return REASON_GONE;
	}
	if (rep.reason != REASON_NONE) {
		if (rep.reason == REASON_NOT_SLUICE && S.neg_n < 16)
			S.neg_dev[S.neg_n++] = st.st_dev;
		off(e, rep.reason);
		return rep.reason;
	}
	int w = (int)shim_raw(SYS_fcntl, fd, F_DUPFD_CLOEXEC, S.fd_base, 0);
	if (w < 0 || w >= TABLE_MAX) {
		if (w >= 0)
			shim_raw(SYS_close, w, 0, 0, 0);
		e->handle = rep.handle;
		e->gen = c->gen;
		unregister(e);
		off(e, REASON_ERROR);
		return REASON_ERROR;
	}
	touch(w);
	S.table[w].owner = fd;
	set_state(&S.table[w], FD_WITNESS);
	e->handle = rep.handle;
	e->dev = rep.dev;
	e->ino = rep.ino;
	e->flags = rep.flags;
	e->gen = c->gen;
	e->witness = w;
	set_state(e, FD_ON);
	return REASON_NONE;
}

/* ready returns the channel to serve fd's call on (acquired: release it),
 * or NULL with *reason saying why the kernel must serve it. An FD_ON entry
 * is proven still to be the registered file (kcmp against our witness: an
 * fd closed and reused behind our back, by stdio say, is caught) on the
 * current channel; otherwise it is registered again. */
static struct chan *ready(int fd, struct fdent *e, uint32_t *reason) {
	pid_t pid = getpid();
	for (int attempt = 0; attempt < 2; attempt++) {
		uint32_t s = state_of(e);
		if (s == FD_ON) {
			struct chan *c = chan_acquire();
			if (c && c->gen == e->gen && syscall(SYS_kcmp, pid, pid, KCMP_FILE, fd, e->witness) == 0) {
				*reason = REASON_NONE;
				return c;
			}
			if (c)
				chan_release(c);
			pthread_mutex_lock(&S.ctl);
			drop(e);
			pthread_mutex_unlock(&S.ctl);
			continue;
		}
		if (s == FD_OFF) {
			*reason = e->reason;
			return NULL;
		}
		if (s != FD_UNKNOWN) {
			*reason = REASON_ERROR; /* IO on one of our own fds */
			return NULL;
		}
		pthread_mutex_lock(&S.ctl);
		uint32_t r = state_of(e) == FD_UNKNOWN ? do_register(fd, e) : REASON_NONE;
		pthread_mutex_unlock(&S.ctl);
		if (r != REASON_NONE) {
			*reason = r;
			return NULL;
		}
	}
	*reason = REASON_ERROR;
	return NULL;
}

/* ---- requests ---- */

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
		if (spins % 1024 == 1023 && gone(c))
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
		if (gone(c)) {
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
		retire(c);
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
		retire(c);
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
	count(call, r == SHIM_FALLBACK ? reason : REASON_NONE);
	if (r == SHIM_FALLBACK && (reason == REASON_STALE || reason == REASON_APPEND)) {
		pthread_mutex_lock(&S.ctl);
		drop(e);
		if (reason == REASON_APPEND)
			off(e, REASON_APPEND);
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
	struct chan *c = ready(fd, e, &reason);
	if (!c) {
		count(call, reason);
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
	struct chan *c = ready(fd, e, &reason);
	if (!c) {
		count(call, reason);
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
	struct chan *c = ready(fd, e, &reason);
	if (!c) {
		count(call, reason);
		return SHIM_FALLBACK;
	}
	int64_t r = submit(c, e, op, arg, off, len, NULL, NULL, &reason);
	chan_release(c);
	return finish(call, e, r, reason);
}

int64_t shim_fstat(enum call call, int fd, struct fdent *e, struct stat *st) {
	uint32_t reason;
	struct chan *c = ready(fd, e, &reason);
	if (!c) {
		count(call, reason);
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

/* ---- the fd table ---- */

void shim_opened(int fd) {
	struct fdent *e = shim_fd(fd);
	if (!e)
		return;
	touch(fd);
	if (state_of(e) == FD_UNKNOWN)
		return;
	pthread_mutex_lock(&S.ctl);
	drop(e);
	set_state(e, FD_UNKNOWN);
	pthread_mutex_unlock(&S.ctl);
}

/* shim_closing: the program closes fd or replaces it (dup2). Ours (a
 * witness, the channel's) are let go first: a witness's file is
 * registered again when used; a channel fd retires the channel. */
void shim_closing(int fd) {
	struct fdent *e = shim_fd(fd);
	if (!e || state_of(e) == FD_UNKNOWN)
		return;
	pthread_mutex_lock(&S.ctl);
	switch (state_of(e)) {
	case FD_ON:
		drop(e);
		break;
	case FD_OFF:
		set_state(e, FD_UNKNOWN);
		break;
	case FD_WITNESS: {
		struct fdent *o = shim_fd(e->owner);
		if (o && state_of(o) == FD_ON && o->witness == fd) {
			unregister(o);
			o->witness = -1;
			set_state(o, FD_UNKNOWN);
		}
		set_state(e, FD_UNKNOWN);
		break;
	}
	case FD_CHANNEL: {
		struct chan *c = __atomic_load_n(&S.cur, __ATOMIC_ACQUIRE);
		if (c) {
			int want = fd;
			__atomic_compare_exchange_n(&c->sock, &want, -1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
			want = fd;
			__atomic_compare_exchange_n(&c->kick, &want, -1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
			retire(c);
		}
		set_state(e, FD_UNKNOWN);
		break;
	}
	}
	pthread_mutex_unlock(&S.ctl);
}

void shim_closing_range(int lo, int hi) {
	int top = __atomic_load_n(&S.hiwater, __ATOMIC_RELAXED);
	for (int fd = lo < 0 ? 0 : lo; fd < top && fd <= hi; fd++)
		shim_closing(fd);
	struct chan *c = __atomic_load_n(&S.cur, __ATOMIC_ACQUIRE);
	if (c && ((c->sock >= lo && c->sock <= hi) || (c->kick >= lo && c->kick <= hi))) {
		pthread_mutex_lock(&S.ctl);
		retire(c);
		pthread_mutex_unlock(&S.ctl);
	}
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
	if (s == FD_ON || s == FD_UNKNOWN) {
		pthread_mutex_lock(&S.ctl);
		drop(e);
		off(e, REASON_MMAP);
		pthread_mutex_unlock(&S.ctl);
	}
	struct stat st;
	shim_raw(SYS_fstat, fd, (long)&st, 0, 0);
}

void shim_setfl(int fd, int flags) {
	struct fdent *e = shim_fd(fd);
	if (!e || !(flags & O_APPEND) || state_of(e) != FD_ON)
		return;
	pthread_mutex_lock(&S.ctl);
	drop(e);
	off(e, REASON_APPEND);
	pthread_mutex_unlock(&S.ctl);
	/* The kernel appends at its own idea of the end: make it take the
	 * length our writes gave the file. */
	struct stat st;
	shim_raw(SYS_fstat, fd, (long)&st, 0, 0);
}

/* ---- fork, start and exit ---- */

static void before_fork(void) { pthread_mutex_lock(&S.ctl); }
static void parent_after_fork(void) { pthread_mutex_unlock(&S.ctl); }

/* child_after_fork: the child shares the parent's memfd and socket but
 * must not use them (its slots are the parent's threads'): it lets go of
 * its copies and opens its own channel on first use. Registrations were
 * the parent's channel's: every fd is checked again. */
static void child_after_fork(void) {
	struct chan *c = S.cur;
	S.cur = NULL;
	if (c) {
		munmap(c->mem, c->size);
		if (c->sock >= 0)
			shim_raw(SYS_close, c->sock, 0, 0, 0);
		if (c->kick >= 0)
			shim_raw(SYS_close, c->kick, 0, 0, 0);
	}
	for (int fd = 0; fd < S.hiwater; fd++) {
		struct fdent *e = &S.table[fd];
		if (e->state == FD_ON && e->witness >= 0)
			shim_raw(SYS_close, e->witness, 0, 0, 0);
		if (e->state != FD_OFF)
			e->state = FD_UNKNOWN;
	}
	memset(S.counts, 0, sizeof S.counts);
	S.failed_at = 0;
	pthread_mutex_init(&S.ctl, NULL);
}

__attribute__((constructor)) static void shim_init(void) {
	const char *p = getenv("SLUICE_SHIM_SOCKET");
	const char *st = getenv("SLUICE_SHIM_STATS");
	S.stats = st && strcmp(st, "1") == 0;
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
