/* Behaviour under the shim (issue 19's matrix), run by TestShimBehaviour:
 * each mode checks its own results (exit 1 and a message on the first
 * wrong one); the test checks from SLUICE_SHIM_STATS which path the calls
 * took, and reads the files back without the shim.
 *
 * usage: behave DIR MODE [ARGS]
 *   append ID        1000 records of REC bytes to DIR/append (O_APPEND)
 *   spawn            an fd inherited across fork+exec, posix_spawn and
 *                    vfork+exec: each child does IO on it (mode child)
 *   child FD TAG     pwrite TAG at its slot of FD's file, read it back
 *   threads          16 threads pwrite and pread disjoint ranges of one fd
 *   direct           O_DIRECT IO, aligned and not: prints each errno
 *   mmap-write       overwrite and extend DIR/mapped, then a child maps it
 *   mmap-check       map DIR/mapped and check it (also run without the shim)
 *   locks            fcntl locks seen across processes, kept by the shim,
 *                    dropped by any close of the file
 *   stdio            fopen/fwrite/fread/fflush/fclose
 *   doorbell SCRATCH [ranges]
 *                    while 4 threads do IO, dup2 the file SCRATCH (off the
 *                    mount) over the library's eventfd 100 times: no
 *                    doorbell write may land in it; with ranges, every
 *                    fourth time close_range(100, ~0U) first; prints the
 *                    longest write+read a thread saw
 *   fork-in-handler  forks while a timer's handler forks too, then another
 *                    thread needs the library's mutex
 *   kernel-size [N]  4 threads extend fresh files, N of them (default 4)
 *                    through the shim and the rest through the kernel, and
 *                    read back through the kernel: reproduces a known gap
 *                    (docs/SHIM.md), not run by the tests
 *   signal           a signal handler does IO (a pipe it dup's, a registered
 *                    file) while its thread registers files: the library
 *                    must not wait for itself */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define PROG "behave"
#include "check.h"

static const char *self;

/* ---- O_APPEND from several processes ---- */

#define REC 64
#define RECORDS 1000

/* One record: "ID SEQ" padded with the ID's letter, ending in a newline;
 * the test checks every one is whole and present once. */
static int append(const char *id) {
	int fd = open(at("append"), O_WRONLY | O_CREAT | O_APPEND, 0644);
	CHECK(fd >= 0, "open append");
	char rec[REC];
	for (int i = 0; i < RECORDS; i++) {
		memset(rec, id[0], sizeof rec);
		int n = snprintf(rec, sizeof rec, "%s %04d ", id, i);
		rec[n] = id[0];
		rec[REC - 1] = '\n';
		CHECK(write(fd, rec, REC) == REC, "append %d", i);
	}
	CHECK(close(fd) == 0, "close");
	return 0;
}

/* ---- an fd inherited across exec ---- */

/* child: the exec'd program does IO on an fd number it was given: its
 * tag at slot TAG[0]-'a' (64 bytes each), read back. */
static int child(const char *fdarg, const char *tag) {
	int fd = atoi(fdarg);
	off_t slot = (tag[0] - 'a') * 64;
	char buf[64] = {0};
	CHECK(pwrite(fd, tag, strlen(tag), slot) == (ssize_t)strlen(tag), "child pwrite %s", tag);
	CHECK(pread(fd, buf, strlen(tag), slot) == (ssize_t)strlen(tag) && strcmp(buf, tag) == 0, "child pread %s", tag);
	struct stat st;
	CHECK(fstat(fd, &st) == 0 && st.st_size >= slot + (off_t)strlen(tag), "child fstat");
	return 0;
}

static void wait_ok(pid_t pid, const char *what) {
	int status;
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s failed", what);
}

static int spawn(void) {
	int fd = open(at("inherit"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && pwrite(fd, "parent", 6, 0) == 6, "parent write");
	char fdarg[16];
	snprintf(fdarg, sizeof fdarg, "%d", fd);
	/* fork + exec */
	pid_t pid = fork();
	if (pid == 0) {
		execl(self, self, dir, "child", fdarg, "b-exec", (char *)NULL);
		_exit(127);
	}
	wait_ok(pid, "the exec child");
	/* posix_spawn */
	char *argv[] = {(char *)self, (char *)dir, "child", fdarg, "c-spawn", NULL};
	CHECK(posix_spawn(&pid, self, NULL, NULL, argv, environ) == 0, "posix_spawn");
	wait_ok(pid, "the posix_spawn child");
	/* vfork + exec: the child runs nothing but execve */
	char *vargv[] = {(char *)self, (char *)dir, "child", fdarg, "d-vfork", NULL};
	pid = vfork();
	if (pid == 0) {
		execve(self, vargv, environ);
		_exit(127);
	}
	wait_ok(pid, "the vfork child");
	/* the parent reads what its children wrote */
	const char *tags[] = {"b-exec", "c-spawn", "d-vfork"};
	for (int i = 0; i < 3; i++) {
		char buf[16] = {0};
		CHECK(pread(fd, buf, strlen(tags[i]), (i + 1) * 64) == (ssize_t)strlen(tags[i]) && strcmp(buf, tags[i]) == 0,
		      "the parent reads %s: %s", tags[i], buf);
	}
	close(fd);
	return 0;
}

/* ---- 16 threads on one fd ---- */

#define THREADS 16
#define PER_THREAD (256 * 1024)
#define CHUNK 4096

static int shared_fd;

static char byte_at(long off) { return (char)((off * 131 + off / CHUNK) % 251); }

static void *thread_io(void *arg) {
	long t = (long)arg;
	char w[CHUNK], r[CHUNK];
	for (long off = t * PER_THREAD; off < (t + 1) * PER_THREAD; off += CHUNK) {
		for (int i = 0; i < CHUNK; i++)
			w[i] = byte_at(off + i);
		if (pwrite(shared_fd, w, CHUNK, off) != CHUNK || pread(shared_fd, r, CHUNK, off) != CHUNK || memcmp(r, w, CHUNK) != 0)
			return (void *)1;
	}
	return NULL;
}

static int threads(void) {
	shared_fd = open(at("threads"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(shared_fd >= 0, "open threads");
	pthread_t th[THREADS];
	for (long t = 0; t < THREADS; t++)
		CHECK(pthread_create(&th[t], NULL, thread_io, (void *)t) == 0, "pthread_create");
	for (int t = 0; t < THREADS; t++) {
		void *res;
		CHECK(pthread_join(th[t], &res) == 0 && res == NULL, "thread %d failed", t);
	}
	static char all[THREADS * PER_THREAD];
	CHECK(pread(shared_fd, all, sizeof all, 0) == (ssize_t)sizeof all, "read all");
	for (long off = 0; off < (long)sizeof all; off++)
		CHECK(all[off] == byte_at(off), "byte %ld", off);
	close(shared_fd);
	return 0;
}

/* ---- O_DIRECT ---- */

/* direct prints "CASE=RESULT" lines (a byte count or an errno name's
 * number); the test compares the shim's lines with the kernel's. */
static int direct(void) {
	int fd = open(at("direct"), O_RDWR | O_CREAT | O_TRUNC | O_DIRECT, 0644);
	CHECK(fd >= 0, "open O_DIRECT");
	char *buf = aligned_alloc(4096, 3 * 4096);
	CHECK(buf != NULL, "aligned_alloc");
	memset(buf, 'd', 3 * 4096);
	struct {
		const char *name;
		int write;
		size_t boff, len;
		off_t off;
	} cases[] = {
		{"aligned-write", 1, 0, 8192, 0},
		{"aligned-read", 0, 0, 8192, 0},
		{"misaligned-buffer-write", 1, 1, 4096, 0},
		{"misaligned-buffer-read", 0, 1, 4096, 0},
		{"misaligned-offset-write", 1, 0, 4096, 100},
		{"misaligned-offset-read", 0, 0, 4096, 100},
		{"misaligned-length-write", 1, 0, 100, 4096},
		{"misaligned-length-read", 0, 0, 100, 0},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		errno = 0;
		ssize_t n = cases[i].write ? pwrite(fd, buf + cases[i].boff, cases[i].len, cases[i].off)
					   : pread(fd, buf + cases[i].boff, cases[i].len, cases[i].off);
		printf("%s=%zd/%d\n", cases[i].name, n, n < 0 ? errno : 0);
	}
	close(fd);
	return 0;
}

/* ---- mmap after a shim write ---- */

#define MAPPED (4 * 4096)

static char mapped_byte(long i) { return (char)('A' + i % 26); }

static int mmap_write(void) {
	int fd = open(at("mapped"), O_RDWR);
	CHECK(fd >= 0, "open mapped");
	char b[MAPPED];
	for (long i = 0; i < MAPPED; i++)
		b[i] = mapped_byte(i);
	/* overwrite the pages the test read through the mount, then extend */
	CHECK(pwrite(fd, b, MAPPED - 4096, 0) == MAPPED - 4096, "overwrite");
	CHECK(pwrite(fd, b + MAPPED - 4096, 4096, MAPPED - 4096) == 4096, "extend");
	close(fd);
	pid_t pid = fork();
	if (pid == 0) {
		execl(self, self, dir, "mmap-check", (char *)NULL);
		_exit(127);
	}
	wait_ok(pid, "the mapping child");
	return 0;
}

static int mmap_check(void) {
	int fd = open(at("mapped"), O_RDONLY);
	CHECK(fd >= 0, "open mapped");
	struct stat st;
	CHECK(fstat(fd, &st) == 0 && st.st_size == MAPPED, "the mapped file's size %lld", (long long)st.st_size);
	char *m = mmap(NULL, MAPPED, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(m != MAP_FAILED, "mmap");
	for (long i = 0; i < MAPPED; i++)
		CHECK(m[i] == mapped_byte(i), "mapped byte %ld is %c", i, m[i]);
	munmap(m, MAPPED);
	close(fd);
	return 0;
}

/* ---- fcntl locks ---- */

static int setlk(int fd, short type) {
	struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
	return fcntl(fd, F_SETLK, &fl);
}

/* locker: a second process tries the lock when told (a byte on in) and
 * answers on out: 'c' conflict (with the holder's pid seen by F_GETLK),
 * 'g' got it (and let it go). 'q' ends it. */
static void locker(int in, int out, pid_t holder) {
	int fd = open(at("locked"), O_RDWR);
	CHECK(fd >= 0, "locker open");
	char cmd;
	while (read(in, &cmd, 1) == 1 && cmd != 'q') {
		char ans = 'g';
		if (setlk(fd, F_WRLCK) < 0) {
			CHECK(errno == EAGAIN || errno == EACCES, "locker F_SETLK");
			struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
			CHECK(fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type == F_WRLCK && fl.l_pid == holder, "F_GETLK: pid %d", fl.l_pid);
			ans = 'c';
		} else
			setlk(fd, F_UNLCK);
		CHECK(write(out, &ans, 1) == 1, "locker answer");
	}
	_exit(0);
}

static char ask(int to, int from) {
	char c = 't', ans = 0;
	CHECK(write(to, &c, 1) == 1 && read(from, &ans, 1) == 1, "ask the locker");
	return ans;
}

static int locks(void) {
	int fd = open(at("locked"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && pwrite(fd, "locked", 6, 0) == 6, "open locked");
	int to[2], from[2];
	CHECK(pipe(to) == 0 && pipe(from) == 0, "pipe");
	pid_t me = getpid(), pid = fork();
	if (pid == 0) {
		close(to[1]), close(from[0]);
		locker(to[0], from[1], me);
	}
	close(to[0]), close(from[1]);
	CHECK(ask(to[1], from[0]) == 'g', "nobody holds the lock yet");
	CHECK(setlk(fd, F_WRLCK) == 0, "F_SETLK");
	CHECK(ask(to[1], from[0]) == 'c', "the other process sees the lock");
	/* The shim's own bookkeeping must not drop the lock: IO on the fd,
	 * then a mapping (the fd's bypass ends). */
	char b[6];
	CHECK(pwrite(fd, "LOCKED", 6, 0) == 6 && pread(fd, b, 6, 0) == 6, "IO under the lock");
	void *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(m != MAP_FAILED, "mmap");
	munmap(m, 4096);
	CHECK(pwrite(fd, "locked", 6, 0) == 6, "IO after the mapping");
	CHECK(ask(to[1], from[0]) == 'c', "the lock held after the shim's IO and the mapping");
	/* SQLite's rule: closing any fd of the file drops the process's locks. */
	int other = open(at("locked"), O_RDONLY);
	CHECK(other >= 0 && pread(other, b, 6, 0) == 6, "a second fd");
	CHECK(ask(to[1], from[0]) == 'c', "the lock held while the second fd is open");
	CHECK(close(other) == 0, "close the second fd");
	CHECK(ask(to[1], from[0]) == 'g', "any close dropped the lock");
	char q = 'q';
	CHECK(write(to[1], &q, 1) == 1, "quit");
	wait_ok(pid, "the locker");
	close(fd);
	return 0;
}

/* ---- stdio ---- */

static int stdio_calls(void) {
	FILE *f = fopen(at("stdio"), "w+");
	CHECK(f != NULL, "fopen");
	for (int i = 0; i < 10000; i++)
		CHECK(fprintf(f, "line %05d\n", i) == 11, "fprintf");
	static char big[100000];
	memset(big, 's', sizeof big);
	CHECK(fwrite(big, 1, sizeof big, f) == sizeof big, "fwrite");
	CHECK(fflush(f) == 0, "fflush");
	CHECK(fseek(f, 0, SEEK_SET) == 0, "fseek");
	char line[32];
	for (int i = 0; i < 10000; i++) {
		char want[16];
		snprintf(want, sizeof want, "line %05d\n", i);
		CHECK(fgets(line, sizeof line, f) != NULL && strcmp(line, want) == 0, "fgets %d: %s", i, line);
	}
	static char back[100000];
	CHECK(fread(back, 1, sizeof back, f) == sizeof back && memcmp(back, big, sizeof big) == 0, "fread");
	CHECK(fclose(f) == 0, "fclose");
	/* appended with stdio, read back with the fd calls */
	f = fopen(at("stdio"), "a");
	CHECK(f != NULL && fputs("tail\n", f) >= 0 && fclose(f) == 0, "fopen a");
	int fd = open(at("stdio"), O_RDWR); /* read-write: the shim reads it (a read-only fd reads the page cache) */
	char t[5];
	CHECK(fd >= 0 && pread(fd, t, 5, 110000 + sizeof big) == 5 && memcmp(t, "tail\n", 5) == 0, "stdio's append");
	close(fd);
	return 0;
}

/* ---- the page cache of read-only fds ---- */

/* A read-only buffered fd reads through the kernel's page cache
 * (REG_CACHED); a shim write through another fd must never leave it
 * reading the old bytes. Each round reads a page through the cache (so
 * the kernel holds it), overwrites it through the shim and reads it
 * through the cache again; the same across a fork. */
static int cached_calls(void) {
	int w = open(at("cached"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(w >= 0, "open rw");
	static char page[4096], got[4096];
	memset(page, '0', sizeof page);
	CHECK(pwrite(w, page, sizeof page, 0) == sizeof page && fdatasync(w) == 0, "first write");
	int r = open(at("cached"), O_RDONLY);
	CHECK(r >= 0, "open ro");
	for (int i = 0; i < 200; i++) {
		CHECK(pread(r, got, sizeof got, 0) == sizeof got && memcmp(got, page, sizeof page) == 0, "round %d: read %c, want %c", i, got[0], page[0]);
		memset(page, 'a' + i % 26, sizeof page);
		page[i] = '#';
		CHECK(pwrite(w, page, sizeof page, 0) == sizeof page, "round %d: write", i);
	}
	CHECK(pread(r, got, sizeof got, 0) == sizeof got && memcmp(got, page, sizeof page) == 0, "last read");
	/* a child's shim write, seen by the parent's cached fd */
	pid_t pid = fork();
	if (pid == 0) {
		memset(page, 'C', sizeof page);
		_exit(pwrite(w, page, sizeof page, 0) == sizeof page ? 0 : 1);
	}
	int status;
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child");
	CHECK(pread(r, got, sizeof got, 0) == sizeof got && got[0] == 'C' && got[4095] == 'C', "the child's write, read through the cache");
	close(r);
	close(w);
	return 0;
}

/* ---- the program replaces the library's own fds ---- */

static volatile int doorbell_stop;

static int64_t doorbell_longest[4]; /* per thread, ns */

static int64_t mono_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *doorbell_io(void *arg) {
	long t = (long)arg;
	char w[512], r[512];
	for (long i = 0; !doorbell_stop; i++) {
		memset(w, 'a' + (int)((t + i) % 26), sizeof w);
		int64_t start = mono_ns();
		ssize_t nw = pwrite(shared_fd, w, sizeof w, t * 4096), nr = pread(shared_fd, r, sizeof r, t * 4096);
		if (mono_ns() - start > doorbell_longest[t])
			doorbell_longest[t] = mono_ns() - start;
		if (nw != (ssize_t)sizeof w || nr != (ssize_t)sizeof r || memcmp(r, w, sizeof w) != 0) {
			fprintf(stderr, PROG ": doorbell thread %ld, round %ld: pwrite %zd, pread %zd, read '%c' for '%c' (errno %d)\n", t, i, nw, nr,
				r[0], w[0], errno);
			return (void *)1;
		}
		usleep(200); /* the gateway's poller goes to sleep: requests kick */
	}
	return NULL;
}

/* eventfd_now returns an fd of this process open on an eventfd (the
 * library's doorbell), or -1. Only from 100 up: the library moves its
 * fds up there as soon as it has them (as any code that opens an fd, it
 * holds a low number for an instant first, which no program can own). */
static int eventfd_now(void) {
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	int found = -1;
	struct dirent *de;
	char path[64], target[64];
	while (found < 0 && (de = readdir(d)) != NULL) {
		int fd = atoi(de->d_name);
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
		ssize_t n = readlink(path, target, sizeof target - 1);
		if (n > 0 && fd >= 100 && fd != dirfd(d)) {
			target[n] = 0;
			if (strcmp(target, "anon_inode:[eventfd]") == 0)
				found = fd;
		}
	}
	closedir(d);
	return found;
}

/* doorbell: a thread that has read the doorbell's fd number and is about
 * to write its 8 bytes must not write them into a file the program has
 * put at that number meanwhile (dup2 over it). */
static int doorbell(const char *scratch, int ranges) {
	shared_fd = open(at("doorbell"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	int s = open(scratch, O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(shared_fd >= 0 && s >= 0, "open");
	/* The file has its final length before the threads start: a read the
	 * kernel serves (a fallback while a channel retires) right after the
	 * shim extended a file can stop at the kernel's older length
	 * (docs/SHIM.md, "Known gaps"; kernel-size reproduces it), which is
	 * not what this mode is about. */
	CHECK(ftruncate(shared_fd, 4 * 4096) == 0, "ftruncate");
	pthread_t th[4];
	for (long t = 0; t < 4; t++)
		CHECK(pthread_create(&th[t], NULL, doorbell_io, (void *)t) == 0, "pthread_create");
	for (int i = 0; i < 100; i++) {
		int k = -1;
		for (int wait = 0; wait < 10000 && k < 0; wait++) {
			if ((k = eventfd_now()) < 0)
				usleep(1000);
		}
		CHECK(k >= 0, "replacement %d: no channel opened again", i);
		/* With ranges, every fourth time a close-everything-above call
		 * first (daemons' close_range(3, ~0U, 0)): the socket, the
		 * doorbell and the witnesses at once. */
		if (ranges && i % 4 == 3)
			CHECK(close_range(100, ~0U, 0) == 0, "close_range");
		CHECK(dup2(s, k) == k, "dup2 over the doorbell");
	}
	doorbell_stop = 1;
	int64_t longest = 0;
	for (int t = 0; t < 4; t++) {
		void *res;
		CHECK(pthread_join(th[t], &res) == 0 && res == NULL, "thread %d failed", t);
		if (doorbell_longest[t] > longest)
			longest = doorbell_longest[t];
	}
	printf("doorbell: longest write+read %.3f s\n", longest / 1e9);
	struct stat st;
	CHECK(fstat(s, &st) == 0 && st.st_size == 0, "%lld bytes landed in the file put over the doorbell", (long long)st.st_size);
	close(shared_fd);
	return 0;
}

/* ---- the kernel's idea of a length the shim changed ---- */

/* Threads 0 and 1 extend a new file through the shim (pwrite), threads 2
 * and 3 through the kernel (the raw system call, which the library does
 * not see); each then reads its bytes back through the kernel. A kernel
 * read stops at the kernel's i_size: after the shim's extension the
 * kernel must know the new length even when its GETATTR for it is
 * dropped because a kernel write changed the inode meanwhile. */
#define SIZE_ROUNDS 400
static pthread_barrier_t size_bar;
static int size_fd;
static volatile int size_bad;
static int size_shim = 4; /* threads below this write through the shim */

static void *size_io(void *arg) {
	long t = (long)arg;
	char w[512], r[512];
	for (int round = 0; round < SIZE_ROUNDS; round++) {
		pthread_barrier_wait(&size_bar); /* main opened this round's file */
		memset(w, 'a' + (int)((t + round) % 26), sizeof w);
		off_t off = t * 4096;
		ssize_t nw = t < size_shim ? pwrite(size_fd, w, sizeof w, off) : syscall(SYS_pwrite64, size_fd, w, sizeof w, off);
		ssize_t nr = syscall(SYS_pread64, size_fd, r, sizeof r, off);
		if (nw != (ssize_t)sizeof w || nr != (ssize_t)sizeof r || memcmp(r, w, sizeof w) != 0) {
			fprintf(stderr, PROG ": size: round %d thread %ld (%s write): pwrite %zd, kernel pread %zd\n", round, t,
				t < size_shim ? "shim" : "kernel", nw, nr);
			size_bad = 1;
		}
		pthread_barrier_wait(&size_bar); /* round done */
	}
	return NULL;
}

static int kernel_size(int shim_writers) {
	pthread_t th[4];
	size_shim = shim_writers;
	CHECK(pthread_barrier_init(&size_bar, NULL, 5) == 0, "barrier");
	for (long t = 0; t < 4; t++)
		CHECK(pthread_create(&th[t], NULL, size_io, (void *)t) == 0, "pthread_create");
	for (int round = 0; round < SIZE_ROUNDS && !size_bad; round++) {
		size_fd = open(at("size"), O_RDWR | O_CREAT | O_TRUNC, 0644);
		CHECK(size_fd >= 0, "open");
		pthread_barrier_wait(&size_bar);
		pthread_barrier_wait(&size_bar);
		close(size_fd);
	}
	CHECK(!size_bad, "a kernel read stopped short of bytes written");
	for (int t = 0; t < 4; t++)
		pthread_join(th[t], NULL);
	return 0;
}

/* ---- IO in a signal handler ---- */

/* PostgreSQL's latch handler writes a byte to a self-pipe whose write end
 * nothing else uses (its first use is in the handler), at any moment: also
 * while the interrupted thread is inside the library, registering a file
 * with the gateway under the library's control mutex. */
static int sig_pipe[2], sig_file = -1;
static char sig_path[4096];
static volatile sig_atomic_t sig_runs, sig_bad, sig_stop;

static void sig_handler(int sig) {
	(void)sig;
	int saved = errno;
	int w = dup(sig_pipe[1]); /* a number the library has not seen */
	char b[64];
	if (w < 0 || write(w, "x", 1) != 1 || close(w) != 0 || read(sig_pipe[0], b, sizeof b) < 1)
		sig_bad = 1;
	/* A registered file: served on the channel, from the handler too. */
	if (pread(sig_file, b, 8, 0) != 8 || memcmp(b, "sigfile!", 8) != 0)
		sig_bad = 2;
	/* A file opened here: its first use registers it, unless the thread
	 * was inside the library (then the kernel serves it). */
	int f = open(sig_path, O_RDWR);
	if (f < 0 || pread(f, b, 8, 0) != 8 || memcmp(b, "sigfile!", 8) != 0 || close(f) != 0)
		sig_bad = 3;
	sig_runs++;
	errno = saved;
}

/* sig_sender signals the main thread, each time once the last handler
 * has run and then ~100 µs later: a handler registering a file costs a
 * gateway round trip, and signals sent faster than that would leave the
 * main thread in handlers only. */
static void *sig_sender(void *arg) {
	pthread_t main_thread = *(pthread_t *)arg;
	struct timespec gap = {0, 100 * 1000}, poll = {0, 20 * 1000};
	while (!sig_stop) {
		int runs = sig_runs;
		pthread_kill(main_thread, SIGUSR1);
		while (sig_runs == runs && !sig_stop)
			nanosleep(&poll, NULL);
		nanosleep(&gap, NULL);
	}
	return NULL;
}

static int signals(void) {
	alarm(120); /* a library waiting for itself hangs: SIGALRM ends it */
	CHECK(pipe2(sig_pipe, O_NONBLOCK | O_CLOEXEC) == 0, "pipe2");
	snprintf(sig_path, sizeof sig_path, "%s", at("sigfile"));
	sig_file = open(sig_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(sig_file >= 0 && pwrite(sig_file, "sigfile!", 8, 0) == 8, "sigfile");
	struct sigaction sa = {.sa_handler = sig_handler, .sa_flags = SA_RESTART};
	sigemptyset(&sa.sa_mask);
	CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction");
	pthread_t self_thread = pthread_self(), th;
	CHECK(pthread_create(&th, NULL, sig_sender, &self_thread) == 0, "pthread_create");
	/* Each new fd is registered on its first pwrite: a round trip to the
	 * gateway under the control mutex, which the signals interrupt. */
	char name[64], w[4096], r[4096];
	int i;
	for (i = 0; i < 400 || sig_runs < 200; i++) {
		CHECK(i < 20000, "only %d handler runs in %d rounds", (int)sig_runs, i);
		snprintf(name, sizeof name, "sig-%d", i % 8);
		int fd = open(at(name), O_RDWR | O_CREAT, 0644);
		CHECK(fd >= 0, "open %s", name);
		memset(w, 'a' + i % 26, sizeof w);
		CHECK(pwrite(fd, w, sizeof w, 0) == (ssize_t)sizeof w, "pwrite %d", i);
		CHECK(pread(fd, r, sizeof r, 0) == (ssize_t)sizeof r && memcmp(r, w, sizeof w) == 0, "pread %d", i);
		CHECK(close(fd) == 0, "close %d", i);
		CHECK(sig_bad == 0, "the handler's IO failed (%d) in round %d", (int)sig_bad, i);
	}
	sig_stop = 1;
	CHECK(pthread_join(th, NULL) == 0, "pthread_join");
	signal(SIGUSR1, SIG_IGN);
	printf("signal: %d rounds, %d handler runs\n", i, (int)sig_runs);
	close(sig_file);
	return 0;
}

/* ---- fork from a handler during a fork ---- */

/* A handler that forks (a SIGCHLD respawner) may run while its thread is
 * inside fork() itself, between the library's atfork handlers: the outer
 * fork must still let go of the library's mutex, or every other thread
 * waits for it for good (a close_range here). */
static volatile sig_atomic_t fork_inner;

static void fork_handler(int sig) {
	(void)sig;
	int saved = errno;
	if (fork_inner < 40) {
		pid_t p = fork();
		if (p == 0)
			_exit(0);
		if (p > 0)
			fork_inner++;
	}
	errno = saved;
}

static void *fork_closer(void *arg) {
	(void)arg;
	close_range(60000, 60000, 0); /* nothing there: it only needs the mutex */
	return NULL;
}

static int fork_in_handler(void) {
	struct sigaction sa = {.sa_handler = fork_handler, .sa_flags = SA_RESTART};
	sigemptyset(&sa.sa_mask);
	CHECK(sigaction(SIGALRM, &sa, NULL) == 0, "sigaction");
	struct itimerval it = {{0, 400}, {0, 400}}, off = {{0, 0}, {0, 0}};
	CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0, "setitimer");
	for (int i = 0; i < 400 && fork_inner < 40; i++) {
		pid_t p = fork();
		CHECK(p >= 0, "fork");
		if (p == 0)
			_exit(0);
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
	}
	setitimer(ITIMER_REAL, &off, NULL);
	while (waitpid(-1, NULL, 0) > 0)
		;
	pthread_t th;
	CHECK(pthread_create(&th, NULL, fork_closer, NULL) == 0, "pthread_create");
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 20;
	CHECK(pthread_timedjoin_np(th, NULL, &until) == 0, "another thread still waits for the library's mutex after %d forks in handlers",
	      (int)fork_inner);
	printf("fork-in-handler: %d forks in handlers\n", (int)fork_inner);
	return 0;
}

int main(int argc, char **argv) {
	if (argc < 3)
		return 2;
	self = argv[0];
	dir = argv[1];
	const char *mode = argv[2];
	int r = 2;
	if (strcmp(mode, "append") == 0 && argc > 3)
		r = append(argv[3]);
	else if (strcmp(mode, "spawn") == 0)
		r = spawn();
	else if (strcmp(mode, "child") == 0 && argc > 4)
		r = child(argv[3], argv[4]);
	else if (strcmp(mode, "threads") == 0)
		r = threads();
	else if (strcmp(mode, "direct") == 0)
		r = direct();
	else if (strcmp(mode, "mmap-write") == 0)
		r = mmap_write();
	else if (strcmp(mode, "mmap-check") == 0)
		r = mmap_check();
	else if (strcmp(mode, "locks") == 0)
		r = locks();
	else if (strcmp(mode, "stdio") == 0)
		r = stdio_calls();
	else if (strcmp(mode, "cached") == 0)
		r = cached_calls();
	else if (strcmp(mode, "doorbell") == 0 && argc > 3)
		r = doorbell(argv[3], argc > 4 && strcmp(argv[4], "ranges") == 0);
	else if (strcmp(mode, "signal") == 0)
		r = signals();
	else if (strcmp(mode, "fork-in-handler") == 0)
		r = fork_in_handler();
	else if (strcmp(mode, "kernel-size") == 0)
		r = kernel_size(argc > 3 ? atoi(argv[3]) : 4);
	if (r == 0)
		printf("ok\n");
	return r;
}
