#include "bus/object_table.hpp"

#include <cerrno>
#include <cstdlib>

namespace dpengine::bus {

std::vector<std::string> complete_types(std::string_view signature) {
    std::vector<std::string> out;
    size_t i = 0;
    while (i < signature.size()) {
        size_t start = i;
        while (i < signature.size() && signature[i] == 'a') ++i;  // arrays of what follows
        int depth = 0;
        do {
            if (i >= signature.size()) break;
            char c = signature[i++];
            if (c == '(' || c == '{') ++depth;
            if (c == ')' || c == '}') --depth;
        } while (depth > 0);
        out.emplace_back(signature.substr(start, i - start));
    }
    return out;
}

namespace {

// A method's arguments in one direction, named from sd-bus's list of NUL-terminated names (in
// names, then out names); `names` moves past the ones used.
std::string args_xml(const char* signature, const char*& names, const char* direction) {
    std::string out;
    for (const auto& type : complete_types(signature ? signature : "")) {
        out += "<arg type=\"" + type + "\"";
        if (names && *names) {
            out += std::string(" name=\"") + names + "\"";
            names += std::strlen(names) + 1;
        }
        out += std::string(" direction=\"") + direction + "\"/>";
    }
    return out;
}

}  // namespace

std::string interface_xml(const char* interface, const sd_bus_vtable* vtable) {
    std::string properties, methods;
    for (const sd_bus_vtable* v = vtable + 1; v->type != _SD_BUS_VTABLE_END; ++v) {
        if (v->type == _SD_BUS_VTABLE_PROPERTY || v->type == _SD_BUS_VTABLE_WRITABLE_PROPERTY) {
            properties += std::string("  <property name=\"") + v->x.property.member + "\" type=\"" +
                v->x.property.signature + "\" access=\"" + (v->type == _SD_BUS_VTABLE_PROPERTY ? "read" : "readwrite") +
                "\"/>\n";
        } else if (v->type == _SD_BUS_VTABLE_METHOD) {
            const char* names = v->x.method.names;
            std::string args = args_xml(v->x.method.signature, names, "in");
            args += args_xml(v->x.method.result, names, "out");
            methods += std::string("  <method name=\"") + v->x.method.member + "\"" +
                (args.empty() ? "/>\n" : ">" + args + "</method>\n");
        }
    }
    return std::string(" <interface name=\"") + interface + "\">\n" + properties + methods + " </interface>\n";
}

int path_list(const std::vector<std::string>& paths, char*** out) {
    char** list = static_cast<char**>(calloc(paths.size() + 1, sizeof(char*)));
    if (!list) return -ENOMEM;
    for (size_t i = 0; i < paths.size(); ++i) {
        if (!(list[i] = strdup(paths[i].c_str()))) {
            for (size_t j = 0; j < i; ++j) free(list[j]);
            free(list);
            return -ENOMEM;
        }
    }
    *out = list;
    return 1;
}

}  // namespace dpengine::bus
