"""CTQualityTraining: the headless training side of CTQualityAssessment (dose/kernel simulation, labels,
datasets, trainers, evaluation, checkpoint export). It imports the model and metric code from
CTQualityAssessmentLib so that training and inference share one implementation."""

__version__ = "0.1.0"
