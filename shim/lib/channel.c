/* libsluice-shim: the channel to the gateway and the registration of
 * fds. docs/SHIM.md is the manual; request.c runs requests on a channel,
 * fdtable.c keeps the fd table, fork and the counters.
 *
 * One channel per process: a SOCK_SEQPACKET socket to the gateway's shim
 * socket, a sealed memfd (header, slot records, data regions) and an
 * eventfd to kick the gateway's poller. An fd is registered on its first
 * data call: the fd itself goes to the gateway (SCM_RIGHTS), which answers
 * with a handle or the reason it will not serve it. Nothing here starts a
 * thread; the control socket is used under one mutex (S.ctl). */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/eventfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 32
#define SLOT_DATA (256 * 1024)
#define REPLY_TIMEOUT_MS 5000       /* a control reply */
#define RETRY_NS 1000000000LL       /* after a failed connect, wait this long */

struct shim_state S = {.ctl = PTHREAD_MUTEX_INITIALIZER};

/* ctl_mine marks the threads inside ctl (or on their way in). A signal
 * handler that interrupted its thread there and calls into the library
 * again must not wait for the mutex its own thread holds: ctl_lock says
 * no, and the caller does without it (the kernel serves the call,
 * REASON_SIGNAL, or the table is put right on a later call). Set before
 * the lock is taken and cleared after it is let go, so a handler between
 * the two sees it set. initial-exec TLS: no allocation on first use, so
 * safe in a handler. */
static __thread int ctl_mine __attribute__((tls_model("initial-exec")));

int ctl_lock(void) {
	if (__atomic_load_n(&ctl_mine, __ATOMIC_RELAXED))
		return 0;
	__atomic_store_n(&ctl_mine, 1, __ATOMIC_RELAXED);
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	pthread_mutex_lock(&S.ctl);
	return 1;
}

void ctl_unlock(void) {
	pthread_mutex_unlock(&S.ctl);
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	__atomic_store_n(&ctl_mine, 0, __ATOMIC_RELAXED);
}

void ctl_forget_mine(void) { ctl_mine = 0; }

long shim_raw(long nr, long a, long b, long c, long d) { return syscall(nr, a, b, c, d); }

void *raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

int64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void count_call(enum call call, uint32_t reason) {
	if (reason >= NUM_REASONS)
		reason = REASON_ERROR;
	__atomic_fetch_add(&S.counts[call][reason == REASON_NONE ? 0 : 1 + reason], 1, __ATOMIC_RELAXED);
}

struct fdent *shim_fd(int fd) {
	if (!S.enabled || fd < 0 || fd >= TABLE_MAX)
		return NULL;
	return &S.table[fd];
}

/* fd_touch raises the table's high-water mark to cover fd. A CAS: a
 * plain store racing another thread's could lower the mark below the
 * library's own fds, and a close_range would then not look at them. */
void fd_touch(int fd) {
	if (fd < 0 || fd >= TABLE_MAX)
		return;
	int top = __atomic_load_n(&S.hiwater, __ATOMIC_RELAXED);
	while (fd + 1 > top && !__atomic_compare_exchange_n(&S.hiwater, &top, fd + 1, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

/* high moves one of our fds up, out of the numbers programs use. */
static int high(int fd) {
	int h = (int)shim_raw(SYS_fcntl, fd, F_DUPFD_CLOEXEC, S.fd_base, 0);
	if (h < 0)
		return fd;
	shim_raw(SYS_close, fd, 0, 0, 0);
	return h;
}

/* own moves a new fd of channel c up and marks it the library's (ctl
 * held), at once: a program that closes or replaces the number from now
 * on (a close-everything loop, dup2 over it) waits for ctl in
 * shim_closing and then retires c, instead of leaving c using a number
 * that is now the program's file. */
static int own(int fd, struct chan *c) {
	if (fd < 0)
		return fd;
	fd = high(fd);
	if (fd < TABLE_MAX) {
		fd_touch(fd);
		S.table[fd].chan = c;
		set_state(&S.table[fd], FD_CHANNEL);
	}
	return fd;
}

/* disown closes one of a channel's fds and forgets it (ctl held, or the
 * channel's last user). */
static void disown(int fd) {
	if (fd < 0)
		return;
	if (fd < TABLE_MAX) {
		S.table[fd].chan = NULL;
		set_state(&S.table[fd], FD_UNKNOWN);
	}
	shim_raw(SYS_close, fd, 0, 0, 0);
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
	do /* all six arguments: shim_raw passes four, and recvfrom wrote the
	    * peer's address wherever the other two registers pointed */
		n = syscall(SYS_recvfrom, sock, (long)buf, len, MSG_DONTWAIT, NULL, NULL);
	while (n < 0 && errno == EINTR);
	struct msg_hdr *h = buf;
	if (n != (long)len || h->magic != MSG_MAGIC || h->type != typ || h->version != SHIM_VERSION)
		return -1;
	return 0;
}

/* recv_hello_ok reads HELLO_OK and the length table's memfd that comes
 * with it (*fd, -1 if none). */
static int recv_hello_ok(int sock, struct msg_hello_ok *ok, int *fd) {
	*fd = -1;
	struct pollfd p = {.fd = sock, .events = POLLIN};
	long r;
	do
		r = shim_raw(SYS_poll, (long)&p, 1, REPLY_TIMEOUT_MS, 0);
	while (r < 0 && errno == EINTR);
	if (r <= 0)
		return -1;
	struct iovec iov = {.iov_base = ok, .iov_len = sizeof *ok};
	char cbuf[CMSG_SPACE(sizeof(int))];
	memset(cbuf, 0, sizeof cbuf);
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
	long n;
	do
		n = shim_raw(SYS_recvmsg, sock, (long)&mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -1;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS && cm->cmsg_len == CMSG_LEN(sizeof(int)))
			memcpy(fd, CMSG_DATA(cm), sizeof(int));
	if (n != (long)sizeof *ok || ok->h.magic != MSG_MAGIC || ok->h.type != MSG_HELLO_OK || ok->h.version != SHIM_VERSION) {
		if (*fd >= 0)
			shim_raw(SYS_close, *fd, 0, 0, 0);
		*fd = -1;
		return -1;
	}
	return 0;
}

/* map_lengths maps the gateway's length table read-only (NULL if it
 * cannot: SEEK_END then asks the gateway). */
static const uint64_t *map_lengths(int fd, size_t *size) {
	if (fd < 0)
		return NULL;
	struct stat st;
	void *m = MAP_FAILED;
	if (shim_raw(SYS_fstat, fd, (long)&st, 0, 0) == 0 && st.st_size > 0 && (st.st_size % 8) == 0)
		m = raw_mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		return NULL;
	*size = (size_t)st.st_size;
	return m;
}

/* ---- channels ---- */

static void destroy(struct chan *c) {
	if (__atomic_exchange_n(&c->destroyed, 1, __ATOMIC_ACQ_REL))
		return;
	munmap(c->mem, c->size);
	if (c->lens)
		munmap((void *)c->lens, c->lens_size);
	disown(__atomic_exchange_n(&c->sock, -1, __ATOMIC_ACQ_REL));
	disown(__atomic_exchange_n(&c->kick, -1, __ATOMIC_ACQ_REL));
}

void chan_release(struct chan *c) {
	if (__atomic_sub_fetch(&c->users, 1, __ATOMIC_ACQ_REL) == 0 && __atomic_load_n(&c->dead, __ATOMIC_ACQUIRE))
		destroy(c);
}

struct chan *chan_acquire(void) {
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
void chan_retire(struct chan *c) {
	uint32_t zero = 0;
	if (!__atomic_compare_exchange_n(&c->dead, &zero, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
		return;
	struct chan *want = c;
	__atomic_compare_exchange_n(&S.cur, &want, NULL, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	/* Tell the gateway now: it stops taking requests and lets go of the
	 * channel (the header's released word), so a request still in
	 * flight finishes or falls back without waiting for a doorbell this
	 * channel may have lost (the gateway's poller re-checks a ring it
	 * was not kicked for only every second). */
	int sock = chan_fd_use(c, &c->sock);
	if (sock >= 0)
		shim_raw(SYS_shutdown, sock, SHUT_RDWR, 0, 0);
	chan_fd_done(c);
	chan_release(c); /* the current channel's own reference */
}

/* chan_fd_use reads one of c's fds (&c->sock or &c->kick) for a use
 * outside ctl; chan_fd_done ends the use. In between the program cannot
 * take the number: chan_lose_fd sets it to -1 first, and the program's
 * close or dup2 waits for fdusers to drop to zero (chan_wait_fds). */
int chan_fd_use(struct chan *c, int *fdp) {
	__atomic_add_fetch(&c->fdusers, 1, __ATOMIC_SEQ_CST);
	return __atomic_load_n(fdp, __ATOMIC_SEQ_CST);
}

void chan_fd_done(struct chan *c) { __atomic_sub_fetch(&c->fdusers, 1, __ATOMIC_SEQ_CST); }

/* gone reports whether c is dead or the gateway has closed its end of
 * c's socket. */
int chan_gone(struct chan *c) {
	if (__atomic_load_n(&c->dead, __ATOMIC_ACQUIRE))
		return 1;
	struct pollfd p = {.fd = chan_fd_use(c, &c->sock), .events = POLLIN | POLLRDHUP};
	int gone = p.fd < 0 || (shim_raw(SYS_poll, (long)&p, 1, 0, 0) > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)));
	chan_fd_done(c);
	return gone;
}

static int kcmp_works(int fd) {
	pid_t pid = S.pid;
	return syscall(SYS_kcmp, pid, pid, KCMP_FILE, fd, fd) == 0;
}

/* chan_open connects to the gateway and shares a new memfd with it.
 * Called with ctl held. After a failure it does not try again for a
 * second (a missing gateway costs one connect a second, not one a call). */
static struct chan *chan_open(void) {
	int64_t t = now_ns();
	if (S.failed_at && t - S.failed_at < RETRY_NS)
		return NULL;
	/* The struct first: each fd the channel takes names it (own). */
	struct chan *c = raw_mmap(NULL, sizeof *c, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (c == MAP_FAILED) {
		S.failed_at = t ? t : 1;
		return NULL;
	}
	int sock = -1, memfd = -1, kick = -1, lens_fd = -1;
	char *mem = MAP_FAILED;
	size_t size = SHM_PAGE + ((SLOTS * sizeof(struct shm_slot) + SHM_PAGE - 1) / SHM_PAGE) * SHM_PAGE + (size_t)SLOTS * SLOT_DATA;
	sock = own((int)shim_raw(SYS_socket, AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, 0), c);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path, S.path, sizeof sa.sun_path);
	if (sock < 0 || shim_raw(SYS_connect, sock, (long)&sa, sizeof sa, 0) < 0 || !kcmp_works(sock))
		goto fail;
	memfd = own((int)shim_raw(SYS_memfd_create, (long)"sluice-shim", MFD_CLOEXEC | MFD_ALLOW_SEALING, 0, 0), c);
	if (memfd < 0 || shim_raw(SYS_ftruncate, memfd, (long)size, 0, 0) < 0 ||
	    shim_raw(SYS_fcntl, memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, 0) < 0)
		goto fail;
	mem = raw_mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	kick = own((int)shim_raw(SYS_eventfd2, 0, EFD_CLOEXEC | EFD_NONBLOCK, 0, 0), c);
	if (mem == MAP_FAILED || kick < 0)
		goto fail;
	struct shm_header *h = (struct shm_header *)mem;
	h->magic = SHM_MAGIC;
	h->version = SHIM_VERSION;
	h->slots = SLOTS;
	h->slot_data = SLOT_DATA;
	h->size = size;
	struct msg_hello hello = {.h = {MSG_MAGIC, MSG_HELLO, SHIM_VERSION}, .slots = SLOTS, .slot_data = SLOT_DATA, .size = size, .pid = (uint32_t)S.pid};
	int fds[2] = {memfd, kick};
	struct msg_hello_ok ok;
	int sent = send_msg(sock, &hello, sizeof hello, fds, 2) >= 0, got = sent && recv_hello_ok(sock, &ok, &lens_fd) >= 0;
	lens_fd = own(lens_fd, c);
	if (!got || ok.err != 0)
		goto fail;
	size_t lens_size = 0;
	const uint64_t *lens = map_lengths(lens_fd, &lens_size);
	disown(lens_fd);
	disown(memfd);
	c->lens = lens;
	c->lens_size = lens_size;
	c->sock = sock;
	c->kick = kick;
	c->mem = mem;
	c->size = size;
	c->slots = SLOTS;
	c->slot_data = SLOT_DATA;
	c->data_start = (uint32_t)(size - (size_t)SLOTS * SLOT_DATA);
	c->gen = ++S.gens;
	c->users = 1;
	S.failed_at = 0;
	__atomic_store_n(&S.cur, c, __ATOMIC_RELEASE);
	return c;
fail:
	if (mem != MAP_FAILED)
		munmap(mem, size);
	disown(sock);
	disown(memfd);
	disown(kick);
	disown(lens_fd);
	munmap(c, sizeof *c); /* never published: no one else has it */
	S.failed_at = t ? t : 1;
	return NULL;
}

/* ---- registration ---- */

void fd_unregister(struct fdent *e) {
	struct chan *c = chan_acquire();
	if (!c)
		return;
	if (c->gen == e->gen) {
		struct msg_unregister m = {.h = {MSG_MAGIC, MSG_UNREGISTER, SHIM_VERSION}, .handle = e->handle};
		send_msg(c->sock, &m, sizeof m, NULL, 0);
	}
	chan_release(c);
}

/* fd_drop forgets e's registration (ctl held): the handle goes back to
 * the gateway. Our witness stays open as long as the program's fd: any
 * close of a file drops the process's POSIX locks on it (fcntl F_SETLK,
 * SQLite's), and the program still holds them. The next registration of
 * the fd takes the witness up again. */
void fd_drop(struct fdent *e) {
	if (state_of(e) != FD_ON)
		return;
	fd_unregister(e);
	set_state(e, FD_UNKNOWN);
}

/* fd_forget: the program closed or replaced fd, or did behind our back
 * (ctl held). The entry forgets everything and our witness is closed:
 * the program's own close drops (or dropped) the process's locks on the
 * file anyway. */
void fd_forget(struct fdent *e) {
	fd_drop(e);
	__atomic_store_n(&e->sync_kernel, 0, __ATOMIC_RELAXED);
	int w = e->witness;
	e->witness = 0;
	set_state(e, FD_UNKNOWN);
	if (w > 0) {
		if (w < TABLE_MAX)
			set_state(&S.table[w], FD_UNKNOWN);
		shim_raw(SYS_close, w, 0, 0, 0);
	}
}

void fd_off(struct fdent *e, uint32_t reason) {
	e->reason = reason;
	set_state(e, FD_OFF);
}

static int negative(uint64_t dev) {
	int n = __atomic_load_n(&S.neg_n, __ATOMIC_ACQUIRE);
	for (int i = 0; i < n; i++)
		if (S.neg_dev[i] == dev)
			return 1;
	return 0;
}

/* check_fd decides what the kernel alone can tell: returns a reason, or
 * REASON_NONE when the gateway must look. System calls only, no ctl: a
 * pipe or socket first used in a signal handler (PostgreSQL's latch
 * writes its self-pipe there) is turned away without the mutex. */
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

/* witness returns our dup of fd (ctl held): the one e keeps if it is
 * still fd's file (the fd was registered before), else a new one. A
 * witness of another file means the program closed fd behind our back
 * (which dropped its locks on that file): that one is closed. */
static int witness(int fd, struct fdent *e) {
	pid_t pid = S.pid;
	if (e->witness > 0 && syscall(SYS_kcmp, pid, pid, KCMP_FILE, fd, e->witness) == 0)
		return e->witness;
	fd_forget(e);
	int w = (int)shim_raw(SYS_fcntl, fd, F_DUPFD_CLOEXEC, S.fd_base, 0);
	if (w >= TABLE_MAX) {
		shim_raw(SYS_close, w, 0, 0, 0);
		return -1;
	}
	return w;
}

/* do_register hands fd, a regular file check_fd passed, to the gateway
 * and records its answer in e (ctl held, e in FD_UNKNOWN). It returns the
 * reason the fd is not served, or REASON_GONE with e left unknown (try
 * again later). */
static uint32_t do_register(int fd, struct fdent *e) {
	/* A channel that fails here may be one to a gateway that restarted
	 * since: retire it and try once more on a new one. */
	struct msg_registered rep;
	struct chan *c = NULL;
	for (int attempt = 0;; attempt++) {
		c = __atomic_load_n(&S.cur, __ATOMIC_ACQUIRE);
		int fresh = !c || c->dead;
		if (fresh)
			c = chan_open();
		if (!c)
			return REASON_GONE;
		struct msg_register m = {.h = {MSG_MAGIC, MSG_REGISTER, SHIM_VERSION}, .fd = (uint32_t)fd};
		if (send_msg(c->sock, &m, sizeof m, &fd, 1) >= 0 && recv_reply(c->sock, &rep, sizeof rep, MSG_REGISTERED) >= 0)
			break;
		chan_retire(c);
		if (fresh || attempt > 0)
			return REASON_GONE;
	}
	if (rep.reason != REASON_NONE) {
		if (rep.reason == REASON_NOT_SLUICE && S.neg_n < 16) {
			/* The device of the file the gateway received, not st's:
			 * the program may have closed fd and opened another file
			 * at its number while this thread waited for ctl. */
			S.neg_dev[S.neg_n] = rep.dev;
			__atomic_store_n(&S.neg_n, S.neg_n + 1, __ATOMIC_RELEASE);
		}
		fd_off(e, rep.reason);
		return rep.reason;
	}
	int w = witness(fd, e);
	if (w < 0) {
		e->handle = rep.handle;
		e->gen = c->gen;
		fd_unregister(e);
		fd_off(e, REASON_ERROR);
		return REASON_ERROR;
	}
	fd_touch(w);
	S.table[w].owner = fd;
	set_state(&S.table[w], FD_WITNESS);
	e->handle = rep.handle;
	e->dev = rep.dev;
	e->ino = rep.ino;
	e->flags = rep.flags;
	e->lenw = c->lens && rep.length_word < c->lens_size / 8 ? rep.length_word : 0;
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
struct chan *fd_ready(int fd, struct fdent *e, uint32_t *reason) {
	pid_t pid = S.pid;
	for (int attempt = 0; attempt < 2; attempt++) {
		uint32_t s = state_of(e);
		if (s == FD_ON) {
			struct chan *c = chan_acquire();
			if (c && c->gen == e->gen && syscall(SYS_kcmp, pid, pid, KCMP_FILE, fd, e->witness) == 0) {
				*reason = REASON_NONE;
				return c;
			}
			int stale = !c || c->gen != e->gen; /* its channel died */
			if (c)
				chan_release(c);
			if (!ctl_lock()) {
				*reason = REASON_SIGNAL;
				return NULL;
			}
			if (stale && state_of(e) == FD_ON)
				__atomic_store_n(&e->sync_kernel, 1, __ATOMIC_RELAXED);
			fd_drop(e);
			ctl_unlock();
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
		struct stat st;
		uint32_t r = check_fd(fd, &st);
		if (r != REASON_NONE) {
			/* Without ctl: a close racing this call is the program's
			 * race, and the worst it leaves is an fd the kernel serves. */
			e->reason = r;
			uint32_t want = FD_UNKNOWN;
			__atomic_compare_exchange_n(&e->state, &want, FD_OFF, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
		} else if (!ctl_lock()) {
			r = REASON_SIGNAL;
		} else {
			r = state_of(e) == FD_UNKNOWN ? do_register(fd, e) : REASON_NONE;
			ctl_unlock();
		}
		if (r != REASON_NONE) {
			*reason = r;
			return NULL;
		}
	}
	/* Registered twice and the channel died under it twice. */
	*reason = REASON_GONE;
	return NULL;
}
