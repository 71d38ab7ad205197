/* The shim's call matrix, run under `sluice run` by TestShimCalls: every
 * call the library intercepts, in each glibc spelling, on files of a
 * Sluice mount. It checks results itself (exit 1 and a message on the
 * first wrong one); the test checks from SLUICE_SHIM_STATS that the calls
 * took the shim's path.
 *
 * usage: calls DIR       the matrix, files in DIR
 *        calls DIR loop  write and read DIR/loop until a call fails or
 *                        60 s pass (the gateway-killed test) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The __fxstat family and the fortified entry points, as old or
 * fortified binaries call them. */
extern int __fxstat(int ver, int fd, struct stat *st);
extern int __fxstat64(int ver, int fd, struct stat64 *st);
extern ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen);
extern ssize_t __pread_chk(int fd, void *buf, size_t n, off_t off, size_t buflen);
extern ssize_t __pread64_chk(int fd, void *buf, size_t n, off64_t off, size_t buflen);
extern int __fxstatat(int ver, int dirfd, const char *path, struct stat *st, int flags);
extern int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *st, int flags);
extern int __open_2(const char *path, int flags);
extern int __open64_2(const char *path, int flags);

#define PROG "calls"
#include "check.h"

static void fill(char *b, size_t n, char seed) {
	for (size_t i = 0; i < n; i++)
		b[i] = (char)(seed + i % 23);
}

static void data_calls(void) {
	char w[300000], r[300000];
	fill(w, sizeof w, 'a');
	int fd = open(at("data"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 3, "open");
	/* pwrite and pwrite64; larger than a slot: split by the library */
	CHECK(pwrite(fd, w, sizeof w, 0) == (ssize_t)sizeof w, "pwrite");
	CHECK(pwrite64(fd, w, 4096, 1 << 20) == 4096, "pwrite64");
	CHECK(pread(fd, r, sizeof r, 0) == (ssize_t)sizeof r && memcmp(r, w, sizeof r) == 0, "pread");
	CHECK(pread64(fd, r, 4096, 1 << 20) == 4096 && memcmp(r, w, 4096) == 0, "pread64");
	CHECK(__pread_chk(fd, r, 100, 10, sizeof r) == 100 && memcmp(r, w + 10, 100) == 0, "__pread_chk");
	CHECK(__pread64_chk(fd, r, 100, 20, sizeof r) == 100 && memcmp(r, w + 20, 100) == 0, "__pread64_chk");
	CHECK(pread(fd, r, 10, (1 << 20) + 4096) == 0, "pread at the end");
	/* read and write at the kernel's offset */
	CHECK(lseek(fd, 0, SEEK_SET) == 0, "lseek SET");
	CHECK(read(fd, r, 1000) == 1000 && memcmp(r, w, 1000) == 0, "read");
	CHECK(lseek(fd, 0, SEEK_CUR) == 1000, "read moved the offset");
	CHECK(__read_chk(fd, r, 1000, sizeof r) == 1000 && memcmp(r, w + 1000, 1000) == 0, "__read_chk");
	CHECK(write(fd, "WRITE", 5) == 5, "write");
	CHECK(lseek64(fd, 0, SEEK_CUR) == 2005, "write moved the offset");
	CHECK(pread(fd, r, 5, 2000) == 5 && memcmp(r, "WRITE", 5) == 0, "write landed at the offset");
	/* SEEK_END from the gateway's length */
	CHECK(lseek(fd, 0, SEEK_END) == (1 << 20) + 4096, "lseek END");
	CHECK(lseek64(fd, -96, SEEK_END) == (1 << 20) + 4000, "lseek64 END");
	/* fstat's spellings */
	struct stat st;
	struct stat64 st64;
	CHECK(fstat(fd, &st) == 0 && st.st_size == (1 << 20) + 4096 && S_ISREG(st.st_mode), "fstat");
	CHECK(fstat64(fd, &st64) == 0 && st64.st_size == st.st_size && st64.st_ino == st.st_ino, "fstat64");
	CHECK(__fxstat(1, fd, &st) == 0 && st.st_size == (1 << 20) + 4096, "__fxstat");
	CHECK(__fxstat64(1, fd, &st64) == 0 && st64.st_ino == st.st_ino, "__fxstat64");
	struct stat kst;
	CHECK(stat(at("data"), &kst) == 0 && kst.st_ino == st.st_ino && kst.st_dev == st.st_dev, "the kernel's identity");
	/* sync, length, allocation */
	CHECK(fsync(fd) == 0 && fdatasync(fd) == 0, "fsync, fdatasync");
	CHECK(ftruncate(fd, 8192) == 0 && fstat(fd, &st) == 0 && st.st_size == 8192, "ftruncate");
	CHECK(ftruncate64(fd, 4096) == 0 && lseek(fd, 0, SEEK_END) == 4096, "ftruncate64");
	CHECK(fallocate(fd, 0, 0, 16384) == 0 && fstat(fd, &st) == 0 && st.st_size == 16384, "fallocate");
	CHECK(fallocate64(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, 4096) == 0, "fallocate64 punch");
	CHECK(pread(fd, r, 4096, 0) == 4096 && r[0] == 0 && r[4095] == 0, "punched range reads zeros");
	CHECK(posix_fallocate(fd, 0, 32768) == 0 && fstat(fd, &st) == 0 && st.st_size == 32768, "posix_fallocate");
	CHECK(posix_fallocate64(fd, 0, 40960) == 0, "posix_fallocate64");
	CHECK(close(fd) == 0, "close");

	/* written through the mount by a process without the shim */
	fd = open(at("from-mount"), O_RDONLY);
	CHECK(fd >= 0 && pread(fd, r, 64, 0) == 26 && memcmp(r, "written through the mount\n", 26) == 0, "a file written without the shim");
	close(fd);

	/* open's other spellings */
	fd = open64(at("data"), O_RDWR);
	CHECK(fd >= 0 && pwrite(fd, "64", 2, 0) == 2, "open64");
	close(fd);
	fd = openat(AT_FDCWD, at("data"), O_RDONLY);
	CHECK(fd >= 0 && pread(fd, r, 2, 0) == 2 && memcmp(r, "64", 2) == 0, "openat");
	close(fd);
	fd = openat64(AT_FDCWD, at("data"), O_RDONLY);
	CHECK(fd >= 0 && pread(fd, r, 2, 0) == 2, "openat64");
	close(fd);
	fd = __open_2(at("data"), O_RDONLY);
	CHECK(fd >= 0 && read(fd, r, 2) == 2, "__open_2");
	close(fd);
	fd = __open64_2(at("data"), O_RDONLY);
	CHECK(fd >= 0 && read(fd, r, 2) == 2, "__open64_2");
	close(fd);
}

/* iov splits n bytes of b into three buffers of uneven sizes (a slot's
 * pieces do not fall on their boundaries). */
static void iov3(struct iovec *v, char *b, size_t n) {
	v[0] = (struct iovec){b, n / 7};
	v[1] = (struct iovec){b + n / 7, n / 2};
	v[2] = (struct iovec){b + n / 7 + n / 2, n - n / 7 - n / 2};
}

/* The vector family (gathered and scattered through the slots, larger
 * vectors split across requests), the v2 flags, sync_file_range and the
 * fd's statx and fstatat spellings. */
static void vector_calls(void) {
	static char w[600000], r[600000];
	fill(w, sizeof w, 'v');
	struct iovec wv[3], rv[3];
	int fd = open(at("vec"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0, "open vec");
	/* pwritev and preadv, both spellings: 600 KB in three pieces */
	iov3(wv, w, sizeof w);
	iov3(rv, r, sizeof r);
	CHECK(pwritev(fd, wv, 3, 4096) == (ssize_t)sizeof w, "pwritev");
	memset(r, 0, sizeof r);
	CHECK(preadv(fd, rv, 3, 4096) == (ssize_t)sizeof r && memcmp(r, w, sizeof r) == 0, "preadv");
	CHECK(pwritev64(fd, wv, 2, 0) == (ssize_t)(wv[0].iov_len + wv[1].iov_len), "pwritev64");
	memset(r, 0, sizeof r);
	CHECK(preadv64(fd, rv, 3, 0) == (ssize_t)sizeof r && memcmp(r, w, wv[0].iov_len + wv[1].iov_len) == 0, "preadv64");
	CHECK(lseek(fd, 0, SEEK_CUR) == 0, "the p calls leave the offset");
	errno = 0;
	CHECK(preadv(fd, rv, 3, -1) == -1 && errno == EINVAL, "preadv at -1 is EINVAL");
	errno = 0;
	CHECK(pread(fd, r, 1, -5) == -1 && errno == EINVAL, "pread at a negative offset is EINVAL");
	/* readv and writev at the kernel's offset */
	CHECK(lseek(fd, 100, SEEK_SET) == 100, "lseek");
	struct iovec small[3] = {{"ab", 2}, {"cde", 3}, {"f", 1}};
	CHECK(writev(fd, small, 3) == 6 && lseek(fd, 0, SEEK_CUR) == 106, "writev moved the offset");
	char a[2], b[3], c[5];
	struct iovec back[3] = {{a, 2}, {b, 3}, {c, 5}};
	CHECK(lseek(fd, 100, SEEK_SET) == 100, "lseek");
	CHECK(readv(fd, back, 3) == 10 && memcmp(a, "ab", 2) == 0 && memcmp(b, "cde", 3) == 0 && c[0] == 'f', "readv");
	CHECK(lseek(fd, 0, SEEK_CUR) == 110, "readv moved the offset");
	/* the v2 calls: -1 is the file's offset; HIPRI ignored, DSYNC durable */
	struct iovec one = {"v2!", 3};
	CHECK(lseek(fd, 200, SEEK_SET) == 200, "lseek");
	CHECK(pwritev2(fd, &one, 1, -1, 0) == 3 && lseek(fd, 0, SEEK_CUR) == 203, "pwritev2 at -1");
	CHECK(pwritev2(fd, &one, 1, 300, RWF_DSYNC) == 3 && lseek(fd, 0, SEEK_CUR) == 203, "pwritev2 RWF_DSYNC");
	CHECK(pwritev64v2(fd, &one, 1, 400, RWF_SYNC | RWF_HIPRI) == 3, "pwritev64v2 RWF_SYNC|RWF_HIPRI");
	char t[3];
	struct iovec in = {t, 3};
	CHECK(lseek(fd, 200, SEEK_SET) == 200, "lseek");
	CHECK(preadv2(fd, &in, 1, -1, RWF_HIPRI) == 3 && memcmp(t, "v2!", 3) == 0 && lseek(fd, 0, SEEK_CUR) == 203, "preadv2 at -1");
	memset(t, 0, 3);
	CHECK(preadv64v2(fd, &in, 1, 300, 0) == 3 && memcmp(t, "v2!", 3) == 0, "preadv64v2");
	CHECK(preadv2(fd, &in, 1, 400, 0) == 3 && memcmp(t, "v2!", 3) == 0, "preadv2 at 400");
	/* RWF_NOWAIT goes to the kernel: its answer on a FUSE file */
	ssize_t nw = preadv2(fd, &in, 1, 300, RWF_NOWAIT);
	CHECK(nw == 3 || (nw == -1 && (errno == EOPNOTSUPP || errno == EAGAIN)), "preadv2 RWF_NOWAIT: %zd", nw);
	/* RWF_APPEND goes to the kernel, which appends at the gateway's length */
	struct stat st;
	CHECK(fstat(fd, &st) == 0, "fstat");
	CHECK(pwritev2(fd, &one, 1, 0, RWF_APPEND) == 3, "pwritev2 RWF_APPEND");
	CHECK(pread(fd, t, 3, st.st_size) == 3 && memcmp(t, "v2!", 3) == 0, "RWF_APPEND landed at the end (%lld)", (long long)st.st_size);
	CHECK(pwritev2(fd, &one, 1, 0, 0) == 3, "the fd is still served after RWF_APPEND");

	/* sync_file_range: WRITE alone is done, WAIT_AFTER a sync */
	CHECK(sync_file_range(fd, 0, 4096, SYNC_FILE_RANGE_WRITE) == 0, "sync_file_range WRITE");
	CHECK(sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) == 0,
	      "sync_file_range WAIT_AFTER");
	errno = 0;
	CHECK(sync_file_range(fd, 0, 0, 0x80) == -1 && errno == EINVAL, "sync_file_range bad flags");
	errno = 0;
	CHECK(sync_file_range(fd, -1, 0, SYNC_FILE_RANGE_WRITE) == -1 && errno == EINVAL, "sync_file_range negative offset");

	/* statx and fstatat on the fd itself: the gateway's attributes */
	CHECK(pwrite(fd, "end", 3, 1 << 20) == 3, "extend");
	CHECK(fstat(fd, &st) == 0 && st.st_size == (1 << 20) + 3, "fstat after extending");
	struct statx sx;
	CHECK(statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &sx) == 0, "statx");
	CHECK(sx.stx_size == (uint64_t)st.st_size && sx.stx_ino == st.st_ino && sx.stx_mode == st.st_mode &&
		      makedev(sx.stx_dev_major, sx.stx_dev_minor) == st.st_dev && sx.stx_mtime.tv_sec == st.st_mtim.tv_sec &&
		      (sx.stx_mask & STATX_BASIC_STATS) == STATX_BASIC_STATS && sx.stx_blocks == (uint64_t)st.st_blocks,
	      "statx agrees with fstat: size %llu", (unsigned long long)sx.stx_size);
	CHECK(statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_MNT_ID, &sx) == 0 && sx.stx_ino == st.st_ino,
	      "statx for the mount id (the kernel's)");
	struct stat st2;
	struct stat64 st64;
	CHECK(fstatat(fd, "", &st2, AT_EMPTY_PATH) == 0 && st2.st_size == st.st_size && st2.st_ino == st.st_ino, "fstatat");
	CHECK(fstatat64(fd, "", &st64, AT_EMPTY_PATH) == 0 && st64.st_size == st.st_size, "fstatat64");
	CHECK(__fxstatat(1, fd, "", &st2, AT_EMPTY_PATH) == 0 && st2.st_size == st.st_size, "__fxstatat");
	CHECK(__fxstatat64(1, fd, "", &st64, AT_EMPTY_PATH) == 0 && st64.st_size == st.st_size, "__fxstatat64");
	CHECK(fstatat(AT_FDCWD, at("vec"), &st2, 0) == 0 && st2.st_ino == st.st_ino, "fstatat of a path (the kernel's)");
	close(fd);
}

/* dup'd fds share the kernel's offset, and each is served. */
static void dup_calls(void) {
	int fd = open(at("dup"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0, "open dup");
	int d1 = dup(fd), d2 = dup2(fd, 40), d3 = dup3(fd, 41, O_CLOEXEC), d4 = fcntl(fd, F_DUPFD, 50), d5 = fcntl(fd, F_DUPFD_CLOEXEC, 60);
	CHECK(d1 > 0 && d2 == 40 && d3 == 41 && d4 >= 50 && d5 >= 60, "dup family");
	CHECK(write(fd, "0123", 4) == 4 && write(d1, "4567", 4) == 4 && write(d2, "89", 2) == 2, "writes through dups");
	CHECK(write(d3, "ab", 2) == 2 && write(d4, "cd", 2) == 2 && write(d5, "ef", 2) == 2, "more writes through dups");
	char r[32] = {0};
	CHECK(pread(d1, r, 16, 0) == 16 && memcmp(r, "0123456789abcdef", 16) == 0, "the shared offset: %.16s", r);
	CHECK(lseek(d5, 0, SEEK_CUR) == 16, "one offset");
	/* F_SETFL O_APPEND: the fd goes to the kernel from now on */
	CHECK(fcntl(fd, F_SETFL, O_APPEND) == 0, "F_SETFL");
	CHECK(pwrite(fd, "Z", 1, 0) == 1, "pwrite on O_APPEND");
	int fl = fcntl(fd, F_GETFL);
	CHECK(fl & O_APPEND, "F_GETFL");
	close(d1), close(d2), close(d3), close(d4), close(d5), close(fd);
	CHECK(close(d1) == -1 && errno == EBADF, "close twice");
}

/* A read-only fd's write is the kernel's EBADF. */
static void readonly_calls(void) {
	int fd = open(at("data"), O_RDONLY);
	CHECK(fd >= 0, "open ro");
	char r[4];
	CHECK(pread(fd, r, 2, 0) == 2, "pread ro");
	errno = 0;
	CHECK(pwrite(fd, "no", 2, 0) == -1 && errno == EBADF, "pwrite on a read-only fd");
	errno = 0;
	CHECK(write(fd, "no", 2) == -1 && errno == EBADF, "write on a read-only fd");
	errno = 0;
	CHECK(ftruncate(fd, 0) == -1 && errno == EINVAL, "ftruncate on a read-only fd");
	close(fd);
}

/* A fork child does IO on an inherited fd and on its own, on a channel
 * of its own; the parent carries on with its own. */
static void fork_calls(void) {
	int fd = open(at("fork"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && pwrite(fd, "parent", 6, 0) == 6, "parent write");
	pid_t pid = fork();
	CHECK(pid >= 0, "fork");
	if (pid == 0) {
		char r[8] = {0};
		CHECK(pread(fd, r, 6, 0) == 6 && memcmp(r, "parent", 6) == 0, "child reads the parent's");
		CHECK(pwrite(fd, "child!", 6, 6) == 6, "child write");
		CHECK(lseek(fd, 0, SEEK_SET) == 0 && write(fd, "P", 1) == 1, "child moves the shared offset");
		int own = open(at("fork-child"), O_RDWR | O_CREAT | O_TRUNC, 0644);
		CHECK(own >= 0 && pwrite(own, "mine", 4, 0) == 4 && fsync(own) == 0, "child's own file");
		close(own);
		exit(0);
	}
	int status;
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed");
	char r[16] = {0};
	CHECK(pread(fd, r, 12, 0) == 12 && memcmp(r, "Parentchild!", 12) == 0, "parent reads the child's: %.12s", r);
	CHECK(lseek(fd, 0, SEEK_CUR) == 1, "the offset the child moved");
	close(fd);
}

static int loop(void) {
	int fd = open(at("loop"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0, "open loop");
	char b[4096];
	fill(b, sizeof b, 'l');
	time_t end = time(NULL) + 60;
	long i;
	for (i = 0; time(NULL) < end; i++) {
		if (pwrite(fd, b, sizeof b, (i % 256) * 4096) < 0 || pread(fd, b, sizeof b, (i % 256) * 4096) < 0) {
			printf("failed after %ld rounds: errno %d\n", i, errno);
			return 0;
		}
		if (i == 100)
			printf("running\n"), fflush(stdout);
	}
	printf("no failure in 60 s\n");
	return 2;
}

int main(int argc, char **argv) {
	if (argc < 2)
		return 2;
	dir = argv[1];
	if (argc > 2 && strcmp(argv[2], "loop") == 0)
		return loop();
	data_calls();
	vector_calls();
	dup_calls();
	readonly_calls();
	fork_calls();
	printf("ok\n");
	return 0;
}
