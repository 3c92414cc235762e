// dpctl: the dpengine control tool.
#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
    if (argc >= 2 && (std::strcmp(argv[1], "version") == 0 || std::strcmp(argv[1], "--version") == 0)) {
        std::printf("dpctl %s\n", DPENGINE_VERSION);
        return 0;
    }
    std::fprintf(stderr, "usage: dpctl version\n");
    return 2;
}
