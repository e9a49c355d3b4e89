"""The page's words in English and Chinese (LlamaBoard's two most used languages), switchable in the page.

A config field's label is its key (what the YAML file and the command line use) in both
languages; the Chinese page adds a translation of the common ones. Everything else on the page
(tabs, buttons, headings) is looked up here by a short name.
"""

from __future__ import annotations

LANGUAGES = {"en": "English", "zh": "中文"}

TEXT: dict[str, tuple[str, str]] = {
    "title": ("factory: fine-tune, chat, evaluate and export", "factory：微调、对话、评估与导出"),
    "language": ("Language", "语言"),
    "tab.train": ("Train", "训练"),
    "tab.chat": ("Chat", "对话"),
    "tab.evaluate": ("Evaluate", "评估"),
    "tab.export": ("Export", "导出"),
    "tab.runs": ("Runs", "运行记录"),
    "group.model": ("Model", "模型"),
    "group.data": ("Data", "数据"),
    "group.train": ("Training", "训练参数"),
    "group.output": ("Output", "输出"),
    "group.eval": ("Evaluation", "评估参数"),
    "group.serve": ("Generation", "生成参数"),
    "group.plugins": ("Plugin options", "插件选项"),
    "preview": ("Preview data", "预览数据"),
    "show_command": ("Show command", "显示命令"),
    "start": ("Start", "开始"),
    "stop": ("Stop", "停止"),
    "save": ("Save settings", "保存设置"),
    "load": ("Load settings", "加载设置"),
    "settings_file": ("Settings file (YAML)", "设置文件（YAML）"),
    "yaml": ("YAML for factory finetune FILE", "factory finetune FILE 使用的 YAML"),
    "command": ("Command line", "命令行"),
    "progress": ("Progress", "进度"),
    "loss": ("Loss curve", "损失曲线"),
    "log": ("Log", "日志"),
    "chat.load": ("Load model", "加载模型"),
    "chat.unload": ("Unload", "卸载"),
    "chat.message": ("Message", "消息"),
    "chat.send": ("Send", "发送"),
    "chat.clear": ("Clear", "清空"),
    "chat.tools": ("Tools (JSON list of function specs)", "工具（函数定义的 JSON 列表）"),
    "chat.history": ("Conversation", "对话记录"),
    "eval.start": ("Start evaluation", "开始评估"),
    "eval.history": ("Results history", "结果历史"),
    "eval.compare": ("Compare two runs", "比较两次运行"),
    "eval.first": ("First run", "第一次运行"),
    "eval.second": ("Second run", "第二次运行"),
    "export.start": ("Export", "导出"),
    "runs.refresh": ("Refresh", "刷新"),
    "runs.first": ("First run", "第一次运行"),
    "runs.second": ("Second run", "第二次运行"),
    "runs.table": ("Training runs", "训练运行"),
    "status": ("Status", "状态"),
}

# Chinese names of the most used config keys, shown beside the key.
FIELDS_ZH: dict[str, str] = {
    "model": "模型",
    "adapter": "适配器",
    "template": "对话模板",
    "quantization": "量化",
    "precision": "精度",
    "patches": "补丁",
    "dataset": "数据集",
    "dataset_dir": "数据目录",
    "cutoff_len": "截断长度",
    "max_samples": "最大样本数",
    "val_size": "验证集比例",
    "stage": "训练阶段",
    "method": "微调方法",
    "optimizer": "优化器",
    "batch_size": "批大小",
    "gradient_accumulation_steps": "梯度累积步数",
    "learning_rate": "学习率",
    "weight_decay": "权重衰减",
    "lr_scheduler": "学习率调度器",
    "warmup_ratio": "预热比例",
    "num_epochs": "训练轮数",
    "max_steps": "最大步数",
    "logging_steps": "日志间隔",
    "save_steps": "保存间隔",
    "seed": "随机种子",
    "output_dir": "输出目录",
    "task": "评估任务",
    "task_dir": "评测数据目录",
    "subjects": "科目",
    "n_shot": "示例数",
    "system": "系统提示词",
    "temperature": "温度",
    "export_dir": "导出目录",
    "export_max_shard_size": "最大分片大小",
    "top_p": "Top-p 采样",
    "max_new_tokens": "最大生成长度",
}


def text(name: str, lang: str) -> str:
    en, zh = TEXT[name]
    return zh if lang == "zh" else en


def field_label(key: str, lang: str) -> str:
    """``learning_rate`` in English; ``learning_rate · 学习率`` in Chinese."""
    zh = FIELDS_ZH.get(key)
    return f"{key} · {zh}" if lang == "zh" and zh else key
